"""Cost model: counts from annotation files, checked against a direct decode of the real fixture."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline import cost
from pipeline.reader import ReaderConfig


def test_counts_match_direct_decode(fixtures_dir, tmp_path):
    split = tmp_path / "sav_train"
    split.mkdir()
    src = fixtures_dir / "sav" / "sav_000001_manual.json"
    shutil.copy(src, split)
    (split / "sav_000001.mp4").write_bytes(b"")  # listed, never opened
    counts = cost.count_split(str(split), ReaderConfig(), progress=False)

    d = json.loads(src.read_text())
    spans = []
    for j in range(len(d["masklet_id"])):
        vis = [i for i, frame in enumerate(d["masklet"]) if mask_utils.area(frame[j]) > 0]
        spans.append(vis[-1] - vis[0] + 1)
    assert counts.masklets == {"manual": len(spans), "auto": 0}
    assert counts.span_frames == sum(spans)
    # windows of 12 tile each span, the last shifted back: ceil(n/12) full windows, or one short one
    assert counts.segment_frames == sum(n if n <= 12 else 12 * math.ceil(n / 12) for n in spans)
    assert counts.segments == sum(math.ceil(n / 12) for n in spans)
    text = cost.report(counts, {"r": 10.0}, scale=1000)
    hours = counts.segment_frames * 1000 / 10.0 / 3600
    assert f"{hours:,.1f}" in text


def test_cli_prints_rates(fixtures_dir, tmp_path, capsys):
    split = tmp_path / "sav_train"
    split.mkdir()
    shutil.copy(fixtures_dir / "sav" / "sav_000001_manual.json", split)
    (split / "sav_000001.mp4").write_bytes(b"")
    assert cost.main(["--split", "sav_train", "--data-root", str(tmp_path), "--rate", "25", "--rate", "7.2"]) == 0
    out = capsys.readouterr().out
    assert "25 frames/s" in out and "7.2 frames/s" in out and "manual 5" in out
    assert np.isfinite(float(out.split("frames/s per GPU [--rate 25]: ")[1].split()[0].replace(",", "")))


# --- the cost model counts what the job plans -----------------------------------------------------


def _bad_split(synth_split, root):
    """A copy of `synth_split` (3 videos) with bad inputs mixed in, one per video:
    1: masklet 1 has an RLE of the wrong size (that masklet fails); 2: masklet 2 is empty;
    3: fine; 4: annotations but no mp4; 5: malformed JSON; 6: annotated past the video end;
    7: every masklet's RLE has the wrong size (the whole video fails); 8: no auto JSON."""
    import json

    from pipeline import sav

    split = root / "sav_train"
    shutil.copytree(synth_split, split, ignore=shutil.ignore_patterns("gt_alpha"))
    d0 = split / "sav_000"

    def clone(src: str, dst: str, mp4: bool = True, auto: bool = True) -> None:
        for suffix in ("_manual.json",) + (("_auto.json",) if auto else ()):
            d = json.loads((d0 / f"{src}{suffix}").read_text())
            d["video_id"] = dst
            (d0 / f"{dst}{suffix}").write_text(json.dumps(d))
        if mp4:
            shutil.copy(d0 / f"{src}.mp4", d0 / f"{dst}.mp4")

    def edit(vid: str, fn, suffix: str = "_manual.json") -> None:
        p = d0 / f"{vid}{suffix}"
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))

    for dst, src, mp4, auto in (("sav_000004", "sav_000001", False, True), ("sav_000005", "sav_000002", True, True),
                                ("sav_000006", "sav_000003", True, True), ("sav_000007", "sav_000001", True, True),
                                ("sav_000008", "sav_000003", True, False)):
        clone(src, dst, mp4, auto)
    wrong = sav.encode_mask(np.ones((10, 10), bool))
    edit("sav_000001", lambda d: d["masklet"][3].__setitem__(1, wrong))
    edit("sav_000001", lambda d: d["masklet"][5].__setitem__(0, wrong), "_auto.json")

    def empty(d):
        h, w = int(d["video_height"]), int(d["video_width"])
        for fr in d["masklet"]:
            fr[2] = sav.encode_mask(np.zeros((h, w), bool))
    edit("sav_000002", empty)
    (d0 / "sav_000005_manual.json").write_text('{"video_id": "sav_000005", "masklet": [[')
    edit("sav_000006", lambda d: d.update(masklet=d["masklet"] + d["masklet"][-1:] * 3))

    def all_wrong(d):
        for fr in d["masklet"]:
            fr[:] = [wrong] * len(fr)
    edit("sav_000007", all_wrong)
    return split


def _expected(split, cfg) -> dict:
    """What the reader plans, counted directly from plan_video (the job's planning step)."""
    from collections import Counter

    from pipeline.errors import EmptyMasklet, InputError
    from pipeline.reader import list_videos, plan_video

    exp = {"videos": 0, "failed_videos": 0, "segments": 0, "segment_frames": 0, "span_frames": 0,
           "masklets": Counter(), "empty_masklets": 0, "failed_masklets": 0,
           "video_errors": Counter(), "masklet_errors": Counter()}
    for ref in list_videos(str(split)):
        exp["videos"] += 1
        try:
            plan = plan_video(ref, cfg)
        except InputError as e:
            exp["failed_videos"] += 1
            exp["video_errors"][type(e).__name__] += 1
            continue
        exp["segments"] += len(plan.segments)
        exp["segment_frames"] += sum(s.length for s in plan.segments)
        masklets = {(s.source, s.masklet_id) for s in plan.segments}
        for m in masklets:  # windows tile the visible span: first start .. last end
            segs = [s for s in plan.segments if (s.source, s.masklet_id) == m]
            exp["span_frames"] += max(s.start + s.length for s in segs) - min(s.start for s in segs)
        for src, _ in masklets:
            exp["masklets"][src] += 1
        for f in plan.failures:
            exp["masklets"][f.ids()["source"]] += 1
            exp["masklet_errors"][f.error_type] += 1
            exp["empty_masklets" if f.error_type == EmptyMasklet.__name__ else "failed_masklets"] += 1
    return exp


@pytest.mark.parametrize("masklets", ["manual", "auto", "all"])
def test_cost_counts_exactly_what_the_reader_plans(synth_split, tmp_path, masklets):
    from pipeline.reader import list_videos, plan_from_annotations, plan_video

    split = _bad_split(synth_split, tmp_path)
    cfg = ReaderConfig(masklets=masklets, backend="pyav")
    counts = cost.count_split(str(split), cfg, progress=False)
    exp = _expected(split, cfg)
    got = {k: getattr(counts, k) for k in exp}
    got["masklets"] = {k: v for k, v in got["masklets"].items() if v}
    exp["masklets"] = dict(exp["masklets"])
    assert got == exp
    # every kind of bad input is in there (the edits are in the manual files; the auto ones are fine)
    if masklets == "auto":
        assert exp["video_errors"] == {"VideoMissing": 1, "AnnotationMissing": 1}
        assert exp["masklet_errors"] == {"RleSizeMismatch": 1} and exp["segments"]
    else:
        assert exp["video_errors"] == {"VideoMissing": 1, "AnnotationMalformed": 1, "AnnotationOutOfRange": 1,
                                       "RleSizeMismatch": 1}
        assert exp["masklet_errors"] == {"RleSizeMismatch": 1 + (masklets == "all"), "EmptyMasklet": 1}
    # and per video, the annotation-only plan is the reader's plan
    for ref in list_videos(str(split)):
        try:
            plan = plan_video(ref, cfg)
        except Exception as e:  # noqa: BLE001 - compared with the annotation-only outcome
            with pytest.raises(type(e)) as again:
                plan_from_annotations(ref, cfg)
            assert str(again.value) == str(e)
            continue
        alone = plan_from_annotations(ref, cfg)
        assert alone.segments == plan.segments
        assert [(f.key, f.message) for f in alone.failures] == [(f.key, f.message) for f in plan.failures]
        assert alone.rles == plan.rles and (alone.height, alone.width) == (plan.height, plan.width)


def test_cost_counts_what_the_job_wrote(job_output):
    """The real job's manifest (guided matter, a missing mp4 and an emptied masklet mixed in)."""
    from collections import Counter

    from mava import schema
    from mava.folder import as_split

    out, _ = job_output
    data_split = out.parent.parent / "data" / out.name
    counts = cost.count_split(str(data_split), ReaderConfig(), progress=False)
    rows = as_split(str(out)).read_manifest().to_pylist()
    ok = [r for r in rows if r["status"] == schema.STATUS_OK]
    failed = [r for r in rows if r["status"] != schema.STATUS_OK]
    video_rows = [r for r in failed if r["key"] == schema.video_failure_key(r["video_id"])]
    assert counts.segments == len(ok) and counts.segment_frames == sum(r["num_frames"] for r in ok)
    assert counts.video_errors == Counter(r["error_type"] for r in video_rows) == {"VideoMissing": 1}
    assert counts.masklet_errors == Counter(r["error_type"] for r in failed if r not in video_rows)
    assert counts.empty_masklets == 1 and counts.videos == len({r["video_id"] for r in rows})
