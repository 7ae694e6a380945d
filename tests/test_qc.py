"""Quality control of pseudo-labels (issue 18): the scores, the verdicts, graded damage, the writer's
cross-window scores, the overlapping-window option, views, and the real job with the oracle matter."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import qc_validation as V
from mava import degrade, qc, schema, views
from mava.folder import SplitDir
from mava.schema import Col
from models.base import MatterConfig, build_matter
from pipeline.reader import ReaderConfig
from pipeline.segments import plan_windows
from tests.job_cli import REPO, manifest, run_cli_many


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --- the score formulas on hand-made mattes -----------------------------------------------------------


def test_a_matte_equal_to_its_mask_scores_perfectly():
    m = np.stack([_disk(64, 80, 32, 20 + 2 * t, 14) for t in range(6)])   # a moving disk
    s = qc.sample_scores(m.astype(np.float32), m)
    assert s[Col.STABILITY] == 1.0 and s[Col.LEAK] == 0.0 and s[Col.HOLE] == 0.0 and s[Col.OFF_BAND] == 0.0
    assert s[Col.FLICKER] < 0.02                      # motion the mask explains is not flicker
    assert qc.verdict(s) == (schema.QC_PASS, "")


def test_scores_measure_what_their_formulas_say():
    h, w = 64, 80
    m = np.stack([_disk(h, w, 32, 40, 16)] * 4)
    r = qc.band_radius(m)
    a = m.astype(np.float32)
    a[:, 2:8, 2:8] = 1.0                               # 36 px of alpha far outside the mask, each frame
    s = qc.sample_scores(a, m)
    assert s[Col.LEAK] == pytest.approx(36 / (m[0].sum() + 36))
    a = m.astype(np.float32)
    a[:, 28:36, 36:44] = 0.0                           # a 64 px hole in the core
    core = qc.erode(m, r)
    assert s != (s := qc.sample_scores(a, m))
    assert s[Col.HOLE] == pytest.approx((core & (a < 0.5)).sum() / core.sum())
    a = m.astype(np.float32) * 0.5                     # everything half transparent
    s = qc.sample_scores(a, m)
    assert s[Col.STABILITY] == 0.0                     # nothing above 0.75, all above 0.25
    band = qc.dilate(m, r) & ~core
    assert s[Col.OFF_BAND] == pytest.approx(0.5 * (m & ~band).sum() / m.sum())
    a = m.astype(np.float32)
    a[1::2] *= 0.6                                     # opacity flickers frame to frame
    assert qc.sample_scores(a, m)[Col.FLICKER] > 0.2
    with pytest.raises(ValueError):
        qc.sample_scores(a[:, :10], m)


def test_window_scores_compare_windows_of_one_masklet():
    m = np.stack([_disk(48, 64, 24, 10 + 2 * t, 10) for t in range(16)])
    a = m.astype(np.float32)
    w1 = qc.Window("k0", list(range(0, 12)), a[0:12], m[0:12])
    w2 = qc.Window("k4", list(range(4, 16)), a[4:16], m[4:16])
    with pytest.raises(ValueError, match="start order"):
        qc.window_scores([w2, w1])
    same = qc.window_scores(iter([w1, w2]))            # a stream, as the writer decodes them
    assert same["k0"] == {Col.OVERLAP_MAD: None, Col.SEAM_JUMP: None}
    assert same["k4"][Col.OVERLAP_MAD] == 0.0 and same["k4"][Col.SEAM_JUMP] < 1.5
    off = qc.Window("k4", list(range(4, 16)), a[4:16] * 0.5, m[4:16])   # the later window disagrees
    diff = qc.window_scores([w1, off])["k4"]
    region = qc.dilate(m[4:12], qc.band_radius(m[4:12])).reshape(8, -1).sum(1)
    assert diff[Col.OVERLAP_MAD] == pytest.approx(np.mean(0.5 * m[4:12].reshape(8, -1).sum(1) / region), rel=1e-5)
    assert diff[Col.SEAM_JUMP] > 10                    # a jump at its first new frame (12)


def test_verdicts_thresholds_and_reasons():
    th = qc.Thresholds()
    row = {Col.STATUS: schema.STATUS_OK, Col.STABILITY: 0.9, Col.LEAK: th.leak_fail * 2, Col.HOLE: th.hole_warn * 1.1,
           Col.FLICKER: None, Col.OVERLAP_MAD: float("nan")}
    assert qc.verdict_columns(row) == {Col.QC: schema.QC_FAIL, Col.QC_REASON: "leak,hole"}
    assert qc.verdict_columns(row | {Col.LEAK: 0.0}) == {Col.QC: schema.QC_WARN, Col.QC_REASON: "hole"}
    assert qc.verdict({Col.STABILITY: th.stability_fail / 2})[0] == schema.QC_FAIL    # lower is worse
    assert qc.verdict_columns({Col.STATUS: schema.STATUS_FAILED}) == {Col.QC: None, Col.QC_REASON: None}
    lenient = qc.Thresholds.parse("leak_warn=1,leak_fail=2")
    assert lenient.leak_warn == 1 and lenient.hole_warn == th.hole_warn
    assert qc.verdict_columns(row, lenient)[Col.QC] == schema.QC_WARN
    for bad in ("leak=1", "leak_warn", "leak_warn=x"):
        with pytest.raises(ValueError, match="bad threshold"):
            qc.Thresholds.parse(bad)


# --- graded damage on synthetic ground truth (the benchmark's machinery, small) -------------------------


@pytest.fixture(scope="module")
def gt_clips():
    return V.gt_clips(1, 104, ["160x96"], seed=7)


@pytest.mark.parametrize("damage", [d for d in V.TARGETS if V.TARGETS[d][1] not in ("seam", "overlap")])
def test_each_score_ranks_the_damage_it_targets(gt_clips, damage):
    score, kind = V.TARGETS[damage]
    pts = V.sample_points(gt_clips, damage, score, kind)
    med, lo = V.within(pts, score)
    assert lo >= 0.8, (damage, [(p.clip, p.strength, p.score, p.error) for p in pts])
    assert all(p.verdict == schema.QC_PASS for p in pts if p.strength == 0)
    assert all(p.verdict != schema.QC_PASS for p in pts if p.strength == 1.0)


@pytest.mark.parametrize("damage", [d for d in V.TARGETS if V.TARGETS[d][1] in ("seam", "overlap")])
def test_window_scores_rank_disagreeing_windows(gt_clips, damage):
    score, kind = V.TARGETS[damage]
    pts = V.window_points(gt_clips, score, kind, 8 if kind == "overlap" else None)
    assert pts and V.within(pts, score)[1] >= 0.8
    assert all(p.verdict == schema.QC_PASS for p in pts if p.strength == 0)


def test_undamaged_ground_truth_passes(gt_clips):
    clean = V.clean_verdicts(gt_clips)
    assert not clean[schema.QC_WARN] and not clean[schema.QC_FAIL], clean


def test_damage_is_seeded_monotone_and_checked(gt_clips):
    c = gt_clips[0]
    a, m = c.alpha[:12], c.masks[:12]
    for name in degrade.ALPHA_DAMAGES:
        d1 = degrade.damage_alpha(a, m, name, 0.5, seed=3)
        assert np.array_equal(d1, degrade.damage_alpha(a, m, name, 0.5, seed=3)), name
        errs = [np.abs(degrade.damage_alpha(a, m, name, s, seed=3) - a).mean() for s in (0.0, 0.3, 1.0)]
        assert errs[0] == 0 and errs[0] < errs[1] < errs[2], (name, errs)
    with pytest.raises(ValueError, match="unknown alpha damage"):
        degrade.damage_alpha(a, m, "smudge", 0.5)
    with pytest.raises(ValueError, match="strength"):
        degrade.damage_alpha(a, m, "blur", 1.5)


# --- the overlapping-window option and fingerprints -------------------------------------------------------


def test_stride_tiles_with_overlap_and_default_is_unchanged():
    assert plan_windows(0, 29, 12) == [(0, 12, 0), (12, 12, 0), (18, 12, 6)]     # today's tiling
    assert plan_windows(0, 29, 12, 12) == plan_windows(0, 29, 12, 0) == plan_windows(0, 29, 12)
    assert plan_windows(0, 29, 12, 6) == [(0, 12, 0), (6, 12, 6), (12, 12, 6), (18, 12, 6)]
    assert plan_windows(3, 22, 12, 5) == [(3, 12, 0), (8, 12, 7), (11, 12, 9)]
    assert plan_windows(0, 7, 12, 4) == [(0, 8, 0)]
    with pytest.raises(ValueError, match="stride"):
        plan_windows(0, 29, 12, 13)
    assert ReaderConfig(segment_len=12, stride=12).stride == 0      # the default tiling, one fingerprint
    with pytest.raises(ValueError, match="stride"):
        ReaderConfig(stride=-1)


def test_stride_in_the_cost_model_and_the_command_line(synth_split):
    from pipeline import run
    from pipeline.cost import count_split

    tiled = count_split(str(synth_split), ReaderConfig(segment_len=6), progress=False)
    strided = count_split(str(synth_split), ReaderConfig(segment_len=6, stride=3), progress=False)
    assert strided.span_frames == tiled.span_frames and strided.segment_frames > tiled.segment_frames
    p = run.build_parser()
    cfg = run.config_from_args(p.parse_args(["--split", "s", "--segment-len", "6", "--stride", "3"]))
    assert cfg.reader.stride == 3
    assert run.config_from_args(p.parse_args(["--split", "s", "--stride", "12"])).reader.stride == 0
    with pytest.raises(SystemExit) as exc:
        run.main(["--split", "s", "--stride", "13"])
    assert exc.value.code == 2


def test_options_added_later_join_fingerprints_only_when_set():
    from pipeline.job import JobConfig

    assert "stride" not in JobConfig("s").content_options()
    assert JobConfig("s", reader=ReaderConfig(stride=4)).content_options()["stride"] == 4
    base = build_matter("mask", MatterConfig()).fingerprint()
    assert base == build_matter("mask", MatterConfig(oracle_damage="blur", oracle_strength=0.5)).fingerprint()
    from models.base import MatterBase

    class ReadsAll(MatterBase):   # a matter that reads every option (as videomama does)
        name, reads = "all", None

        def __init__(self, cfg):
            self.cfg = cfg

    opts = ReadsAll(MatterConfig()).resolved_options()
    assert "oracle_damage" not in opts and "oracle_strength" not in opts and "seed" in opts
    assert ReadsAll(MatterConfig(oracle_damage="leak")).resolved_options()["oracle_damage"] == "leak"


def test_oracle_matter_checks_its_setup(tmp_path):
    with pytest.raises(ValueError, match="needs --checkpoint"):
        build_matter("oracle", MatterConfig())
    with pytest.raises(ValueError, match="does not exist"):
        build_matter("oracle", MatterConfig(checkpoint=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="unknown oracle damage"):
        build_matter("oracle", MatterConfig(checkpoint=str(tmp_path), oracle_damage="smudge"))
    m = build_matter("oracle", MatterConfig(checkpoint=str(tmp_path), oracle_damage="leak", oracle_strength=0.5))
    fp = m.fingerprint()
    assert fp["options"] == {"oracle_damage": "leak", "oracle_strength": 0.5} and len(fp["weights_sha256"]) == 64
    frames, masks = np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), bool)
    with pytest.raises(ValueError, match="no ground truth"):
        m.refine_batch_uint8([(frames, masks)], keys=["sav_000001_m000_0000"])


WRITER_IN_DECORD_PROCESS = r"""
import decord  # as in a Ray worker that read videos: cv2 cannot decode PNG here any more
import numpy as np, pyarrow.parquet as pq, sys
from pipeline.encode import encode_sample
from pipeline.segments import Segment, SegmentData
from pipeline.writer import write_shard
from pipeline import sav
yy, xx = np.mgrid[0:40, 0:56]
masks = np.stack([(yy - 20) ** 2 + (xx - 12 - 2 * t) ** 2 < 100 for t in range(16)])
samples = []
for start, overlap, gain in ((0, 0, 1.0), (4, 8, 0.5)):
    seg = Segment("sav_000009", "manual", 1, start, 12, overlap)
    m = masks[start:start + 12]
    data = SegmentData(seg, np.zeros((12, 40, 56, 3), np.uint8), m, [sav.encode_mask(x) for x in m])
    samples.append(encode_sample(data, (m * 255 * gain).astype(np.uint8), "test", frames="none"))
write_shard(sys.argv[1], "qct", 0, samples)
rows = {r["key"]: r for r in pq.read_table(sys.argv[1] + "/manifest/qct-000000.parquet").to_pylist()}
print(rows["sav_000009_m001_0004"]["overlap_mad"], rows["sav_000009_m001_0004"]["qc"], rows["sav_000009_m001_0000"]["overlap_mad"])
"""


def test_writer_scores_across_windows_in_a_process_that_imported_decord(tmp_path):
    res = subprocess.run([sys.executable, "-c", WRITER_IN_DECORD_PROCESS, str(tmp_path / "qct")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    mad, verdict, first = res.stdout.split()
    assert float(mad) > qc.Thresholds().overlap_mad_fail and verdict == schema.QC_FAIL and first == "None"


# --- the real job with the oracle matter --------------------------------------------------------------------

#: every run cuts 6-frame windows every 3 frames, so every window shares frames with the previous one
TILING = ["--segment-len", "6", "--stride", "3"]
RUNS = {"clean": [], "leak_weak": ["--oracle-damage", "leak", "--oracle-strength", "0.25"],
        "leak_strong": ["--oracle-damage", "leak", "--oracle-strength", "1"]}


@pytest.fixture(scope="module")
def oracle_jobs(synth_split, tmp_path_factory) -> dict[str, Path]:
    """The job with the oracle matter (the ground truth, then graded damage) on the synthetic split with
    overlapping windows, in one process and one local Ray session."""
    root = tmp_path_factory.mktemp("qc_jobs")
    gt = str(synth_split / "gt_alpha")
    runs = [["--out", str(root / name), "--matter", "oracle", "--checkpoint", gt, "--videos-per-shard", "3",
             *TILING, *extra] for name, extra in RUNS.items()]
    results = run_cli_many(synth_split.parent, root / "unused", runs)
    for name, r in zip(RUNS, results):
        assert r["rc"] == 0, (name, r["stderr"][-3000:], r["log"][-3000:])
    return {name: root / name / synth_split.name for name in RUNS}


def _ok(out: Path) -> list[dict]:
    return [r for r in manifest(out) if r["status"] == schema.STATUS_OK]


def _later(rows: list[dict]) -> list[dict]:
    """The windows that are not the first of their masklet."""
    first = {}
    for r in rows:
        k = (r[Col.VIDEO_ID], r[Col.MASKLET_ID])
        first[k] = min(first.get(k, r[Col.START]), r[Col.START])
    return [r for r in rows if r[Col.START] > first[(r[Col.VIDEO_ID], r[Col.MASKLET_ID])]]


def test_ground_truth_passes_qc_in_the_real_job(oracle_jobs):
    rows = _ok(oracle_jobs["clean"])
    assert rows and all(r[Col.QC] == schema.QC_PASS for r in rows), [(r["key"], r[Col.QC_REASON]) for r in rows]
    assert all(r[Col.STABILITY] is not None and r[Col.LEAK] is not None for r in rows)
    visible = [r for r in rows if r[Col.MASK_AREA] > 0.01]   # a window where the object hides all along has no flicker
    assert visible and all(r[Col.FLICKER] is not None and r[Col.HOLE] is not None for r in visible)
    later = _later(rows)
    assert later and all(r[Col.OVERLAP] >= 3 for r in later)
    assert all(r[Col.OVERLAP_MAD] in (0.0, None) for r in later)  # the same answer twice (None: object hidden)
    assert sum(r[Col.OVERLAP_MAD] == 0.0 for r in later) >= len(later) // 2
    assert sum(r[Col.SEAM_JUMP] is not None for r in later) >= len(later) // 2


def test_verdicts_and_scores_order_graded_damage(oracle_jobs):
    runs = [_ok(oracle_jobs[n]) for n in RUNS]
    assert len({len(r) for r in runs}) == 1
    for s in (Col.LEAK, Col.OVERLAP_MAD):
        mean = [np.mean([r[s] for r in rows if r[s] is not None]) for rows in runs]
        assert mean[0] < mean[1] < mean[2], (s, mean)
    rank = {schema.QC_PASS: 0, schema.QC_WARN: 1, schema.QC_FAIL: 2}
    by_key = [{r["key"]: r for r in rows} for rows in runs]
    for key in by_key[0]:   # per sample: never better with more damage, and leak never smaller
        v = [rank[b[key][Col.QC]] for b in by_key]
        assert v == sorted(v), (key, v)
        assert by_key[0][key][Col.LEAK] <= by_key[1][key][Col.LEAK] <= by_key[2][key][Col.LEAK], key
    assert sum(rank[r[Col.QC]] for r in runs[2]) > sum(rank[r[Col.QC]] for r in runs[1]) > 0
    assert all("leak" in r[Col.QC_REASON] for r in runs[2])


def test_overlapping_windows_are_planned_and_fingerprinted(oracle_jobs, synth_split):
    from pipeline.reader import list_videos, plan_video

    rows = _ok(oracle_jobs["clean"])
    cfg = ReaderConfig(segment_len=6, stride=3)
    planned = {s.key for ref in list_videos(str(synth_split)) for s in plan_video(ref, cfg).segments}
    assert {r["key"] for r in rows} == planned
    assert len(planned) > sum(len(plan_video(ref, ReaderConfig(segment_len=6)).segments)
                              for ref in list_videos(str(synth_split)))
    marker = json.loads(next((oracle_jobs["leak_weak"] / "done").glob("*.json")).read_text())
    assert marker["fingerprint"]["content"]["stride"] == 3
    assert marker["fingerprint"]["matter"]["options"] == {"oracle_damage": "leak", "oracle_strength": 0.25}


def _mava(*args: str) -> subprocess.CompletedProcess:
    """``python -m mava ARGS`` in this process (a subprocess of pyarrow/duckdb readers aborts now and then at
    interpreter exit on this machine, before and after this change: "terminate called without an active
    exception"), with its exit code and output."""
    import contextlib
    import io

    from mava.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exn:
            rc = exn.code
    return subprocess.CompletedProcess(["mava", *args], rc, out.getvalue(), err.getvalue())


def test_qc_report_sheet_recompute_filter_and_subsets(oracle_jobs, tmp_path):
    d = tmp_path / "split"
    shutil.copytree(oracle_jobs["leak_weak"], d)
    sheet = tmp_path / "worst.png"
    res = _mava("qc", str(d), "--worst", "3", "--sheet", str(sheet))
    assert res.returncode == 0, res.stderr
    assert "verdicts: pass" in res.stdout and "per video" in res.stdout and "worst 3 samples" in res.stdout
    from PIL import Image

    assert Image.open(sheet).size[0] > 400
    manifests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (d / "manifest").glob("*.parquet")}
    res = _mava("qc", str(d), "--recompute", "--thresholds", "leak_warn=0.9,leak_fail=0.95,flicker_warn=5,flicker_fail=6,"
                "off_band_warn=5,off_band_fail=6,overlap_mad_warn=5,overlap_mad_fail=6,seam_jump_warn=500,seam_jump_fail=600")
    assert res.returncode == 0 and "verdicts from the view" in res.stdout, res.stderr
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in manifests} == manifests   # only the view
    table, vdef = views.qc_table(str(d))
    assert vdef[schema.VIEW_THRESHOLDS]["leak_warn"] == 0.9
    res = _mava("filter", str(d), "--where", "qc = 'pass' and leak < 0.5", "--name", "clean")
    assert res.returncode == 0, res.stderr
    keys = views.subset_keys(str(d), "clean")
    ok = [r for r in table.to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    assert keys == {r[Col.KEY] for r in ok if r[Col.QC] == schema.QC_PASS and r[Col.LEAK] < 0.5} and keys
    assert len(keys) > sum(r[Col.QC] == schema.QC_PASS for r in _ok(oracle_jobs["leak_weak"]))  # the view's verdicts
    from mava.loaders import ClipConfig, RandomAccessClips, StreamingClips

    cfg = ClipConfig(fields=("alpha", "mask"))
    assert {RandomAccessClips(str(d), cfg, subset="clean")[i]["key"] for i in range(len(keys))} == keys
    assert {c["key"] for c in StreamingClips(str(d), cfg, subset="clean", shuffle_shards=False)} == keys
    with pytest.raises(views.ViewError, match="no view 'other'"):
        RandomAccessClips(str(d), cfg, subset="other")
    from mava import export, hf

    ds = hf.load(str(d), subset="clean", cache_dir=str(tmp_path / "hf"))
    assert sorted(ds[schema.HF_KEY_COLUMN]) == sorted(keys)
    some = next(r for r in ok if r[Col.KEY] in keys)
    res = export.export(str(d), some[Col.VIDEO_ID], some[Col.MASKLET_ID], str(tmp_path / "x"), subset="clean", png=False)
    assert {w.key for w in res.stitched.windows} == {r[Col.KEY] for r in ok if r[Col.KEY] in keys and
                                                    (r[Col.VIDEO_ID], r[Col.MASKLET_ID]) == (some[Col.VIDEO_ID], some[Col.MASKLET_ID])}
    res = _mava("verify", str(d), "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr      # the views folder is not part of the shards
    for bad in (["qc", str(d), "--recompute", "--thresholds", "leak=1"], ["qc", str(d), "--thresholds", "leak_warn=1"],
                ["filter", str(d), "--where", "leak <", "--name", "x"], ["filter", str(d), "--where", "true", "--name", "qc"],
                ["filter", str(d), "--where", "true", "--name", "a.b"]):
        res = _mava(*bad)
        assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr, (bad, res.stderr)


def test_older_output_stays_readable_and_gets_scores_from_the_tar(oracle_jobs, tmp_path):
    """A split written before the QC columns: every reader takes it (nulls), `mava qc` says so, and
    --recompute --from-tar computes the very scores the writer would have stored."""
    d = tmp_path / "old"
    shutil.copytree(oracle_jobs["leak_weak"], d)
    written = {r["key"]: r for r in _ok(d)}
    for p in (d / "manifest").glob("*.parquet"):          # make it an older output: no QC columns
        t = pq.read_table(p).drop_columns(list(schema.QC_COLUMNS))
        pq.write_table(t, p, compression="zstd")
        marker = d / "done" / (p.stem + ".json")
        doc = json.loads(marker.read_text())
        doc[schema.MARKER_MANIFEST_SHA256] = hashlib.sha256(p.read_bytes()).hexdigest()
        marker.write_text(json.dumps(doc))
    table, bad = SplitDir(str(d)).read_manifest_checked()
    assert not bad and table.column(Col.QC).null_count == table.num_rows
    res = _mava("verify", str(d), "--no-progress")
    assert res.returncode == 0 and "predates the QC columns" in res.stdout, res.stdout
    res = _mava("qc", str(d))
    assert res.returncode == 0 and "have no QC scores" in res.stdout and "--from-tar" in res.stdout
    res = _mava("qc", str(d), "--recompute", "--from-tar", "--no-progress")
    assert res.returncode == 0 and "have no QC scores" not in res.stdout, res.stdout + res.stderr
    got = {r[Col.KEY]: r for r in views.qc_table(str(d))[0].to_pylist()}
    for key, r in written.items():
        assert (got[key][Col.QC], got[key][Col.QC_REASON]) == (r[Col.QC], r[Col.QC_REASON]), key
        for s in qc.SCORES:
            assert (got[key][s] is None) == (r[s] is None), (key, s)
            assert r[s] is None or got[key][s] == pytest.approx(r[s], rel=1e-5, abs=1e-6), (key, s)
