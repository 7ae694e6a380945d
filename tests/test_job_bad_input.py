"""Bad inputs mixed into a split: failed rows with clear errors, every other sample ok, exit code 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mava import schema
from pipeline import sav, synth
from test_job import SPLIT, manifest, planned_keys, run_cli

GOOD = "sav_000001"
# video id -> (how it is broken, expected error type)
BROKEN = {
    "sav_000002": ("truncated mp4", "VideoCorrupt"),
    "sav_000003": ("missing mp4", "VideoMissing"),
    "sav_000004": ("malformed json", "AnnotationMalformed"),
    "sav_000005": ("rle size != video size", "RleSizeMismatch"),
    "sav_000006": ("hostile video_id in json", "UnsafeId"),
    "sav_000007": ("annotation longer than video", "AnnotationOutOfRange"),
}
EMPTY = "sav_000008"  # one empty masklet: that masklet fails, the others are ok
# 12 videos, 3 per shard: shards 0-2 hold the broken ones, shard 3 (videos 10-12) is clean


def _json(split: Path, vid: str) -> Path:
    return split / "sav_000" / f"{vid}_manual.json"


def _edit(split: Path, vid: str, fn) -> None:
    p = _json(split, vid)
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _break(split: Path) -> None:
    mp4 = split / "sav_000" / "sav_000002.mp4"
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    (split / "sav_000" / "sav_000003.mp4").unlink()
    _json(split, "sav_000004").write_text('{"video_id": "sav_000004", "masklet": [[{"size": [')

    def shrink(d):
        for frame in d["masklet"]:
            for rle in frame:
                rle["size"] = [rle["size"][0] // 2, rle["size"][1]]
    _edit(split, "sav_000005", shrink)
    _edit(split, "sav_000006", lambda d: d.update(video_id="../../../tmp/escaped"))
    _edit(split, "sav_000007", lambda d: d.update(masklet=d["masklet"] + d["masklet"][-1:] * 5))

    def empty(d):
        h, w = int(d["video_height"]), int(d["video_width"])
        for frame in d["masklet"]:
            frame[1] = sav.encode_mask(np.zeros((h, w), bool))
    _edit(split, EMPTY, empty)


@pytest.fixture(scope="module")
def bad_split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_root")
    specs = synth.make_specs(12, 40, seed=7, sizes=["96x64", "64x96"])
    split = synth.generate_split(root, specs, SPLIT, gt=False)
    pristine = tmp_path_factory.mktemp("pristine") / SPLIT
    shutil.copytree(split, pristine)
    _break(split)
    return split


@pytest.fixture(scope="module")
def bad_run(bad_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out")
    res = run_cli(bad_split.parent, out, "--matter", "mask", "--videos-per-shard", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_each_bad_input_is_a_clear_failed_row(bad_split, bad_run):
    rows = manifest(bad_run / SPLIT)
    assert {r["key"] for r in rows} == planned_keys(bad_split)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_id"], []).append(r)
    for vid, (what, err_type) in BROKEN.items():
        vrows = by_video[vid]
        assert all(r["status"] == "failed" for r in vrows), what
        assert {r["error_type"] for r in vrows} == {err_type}, (what, vrows)
        assert all(vid in r["error"] for r in vrows), f"{what}: the error must name the file: {vrows}"
    # one failure, one shape: a failed row of a sample key has its ids filled, whoever made it
    masklet_rows = [r for r in rows if r["status"] == "failed" and r["key"] != schema.video_failure_key(r["video_id"])]
    assert "EmptyMasklet" in {r["error_type"] for r in masklet_rows}, masklet_rows
    for r in masklet_rows:
        k = schema.parse_key(r["key"])
        assert (r["source"], r["masklet_id"], r["start"]) == (k.source, k.masklet_id, k.start), r
    hostile = by_video["sav_000006"]
    assert hostile[0]["key"] == schema.video_failure_key("sav_000006")
    assert "disagrees" in hostile[0]["error"]
    empty_rows = by_video[EMPTY]
    assert [r["error_type"] for r in empty_rows if r["status"] == "failed"] == ["EmptyMasklet"]
    assert any(r["status"] == "ok" for r in empty_rows)
    assert all(r["status"] == "ok" for r in by_video[GOOD])
    # nothing escaped the output folder, nothing partial was left
    assert not (Path("/tmp/escaped")).exists()
    assert not list((bad_run / SPLIT).rglob(f"*{schema.TMP_SUFFIX}"))
    outside = [p for p in bad_run.rglob("*") if p.is_file() and (bad_run / SPLIT) not in p.parents]
    assert outside == []


def test_retry_failed_redoes_only_shards_with_failures(bad_split, bad_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(bad_run, out)
    done = out / SPLIT / "done"
    stamps = {p.name: p.stat().st_mtime_ns for p in done.glob("*.json")}
    # repair the missing video, then retry: its rows become ok
    fixed = tmp_path / "data" / SPLIT
    shutil.copytree(bad_split, fixed)
    pristine = next(bad_split.parent.parent.glob("pristine*")) / SPLIT
    shutil.copy(pristine / "sav_000" / "sav_000003.mp4", fixed / "sav_000" / "sav_000003.mp4")
    res = run_cli(fixed.parent, out, "--matter", "mask", "--videos-per-shard", "3", "--retry-failed")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = manifest(out / SPLIT)
    assert all(r["status"] == "ok" for r in rows if r["video_id"] == "sav_000003")
    summary = json.loads((out / SPLIT / schema.RUN_JSON).read_text())["summary"]
    # shards 0-2 have failed rows and are redone; the clean shard 3 is skipped, its marker untouched
    assert summary["shards_done"] == 3 and summary["shards_skipped"] == 1
    clean = schema.shard_done(SPLIT, 3).split("/")[-1]
    assert all((p.stat().st_mtime_ns == stamps[p.name]) == (p.name == clean) for p in done.glob("*.json"))
