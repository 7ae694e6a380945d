"""The Ray job end to end, on a real local Ray cluster, over generated SA-V splits."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time

import duckdb
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from mava import schema
from pipeline.reader import ReaderConfig, list_videos, plan_video

from tests.job_cli import REPO, SPLIT, kill_tree, manifest, planned_keys, run_cli, tree_bytes


@pytest.fixture(scope="module")
def mask_run(synth_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("mask_run")
    res = run_cli(synth_split.parent, out, "--matter", "mask")
    assert res.returncode == 0, res.stderr[-3000:]
    return out / SPLIT, res


def test_every_planned_key_once(synth_split, mask_run):
    out_split, res = mask_run
    rows = manifest(out_split)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == planned_keys(synth_split)
    ok = {r["key"] for r in rows if r["status"] == "ok"}
    assert ok, "no sample succeeded"
    seen = []
    for s in wds.WebDataset(f"{out_split}/shards/{SPLIT}-{{000000..{len(list_videos(str(synth_split))) - 1:06d}}}.tar",
                            shardshuffle=False):
        seen.append(s["__key__"])
        meta = json.loads(s[schema.META_EXT])
        assert len([k for k in s if k.startswith("alpha.")]) == meta["num_frames"]
        assert len([k for k in s if k.startswith("frame.")]) == meta["num_frames"]
    assert sorted(seen) == sorted(ok)
    n_failed = duckdb.sql(f"select count(*) from '{out_split}/{schema.MANIFEST_GLOB}' where status='failed'").fetchall()
    assert n_failed[0][0] == len(rows) - len(ok)
    run = json.loads((out_split / schema.RUN_JSON).read_text())
    assert run["summary"]["samples_ok"] == len(ok) and run["matter"]["name"] == "mask"
    assert sum(a["stats"]["segments"] for a in run["actors"]) == len(ok)  # every matted segment written
    assert 0 < run["summary"]["actor_utilisation"] <= 1 and 0 <= run["summary"]["actor_utilisation_warm"] <= 1
    assert run["code_version"] != "unknown" and run["config"]["split"] == SPLIT
    assert "samples" in res.stdout and "frames" in res.stdout


def test_mask_matter_alpha_equals_input_mask_of_its_frame(synth_split, mask_run):
    """Proves frame alignment end to end: alpha PNG i == SA-V mask of annotated frame start+i."""
    out_split, _ = mask_run
    annotations = {p.name[:-len("_manual.json")]: json.loads(p.read_text())
                   for p in synth_split.rglob("*_manual.json")}
    checked = 0
    for s in wds.WebDataset(sorted(str(p) for p in (out_split / "shards").glob("*.tar")), shardshuffle=False):
        meta = json.loads(s[schema.META_EXT])
        masklet = annotations[meta["video_id"]]["masklet"]
        for i, ann in enumerate(meta["ann_frames"]):
            alpha = np.asarray(Image.open(io.BytesIO(s[schema.alpha_ext(i)])))
            mask = mask_utils.decode(masklet[ann][meta["masklet_id"]]).astype(bool)
            assert alpha.shape == mask.shape
            assert np.array_equal(alpha == 255, mask) and set(np.unique(alpha)) <= {0, 255}
            checked += 1
        assert meta["video_frames"] == [4 * a for a in meta["ann_frames"]]
    assert checked > 0


def test_rerun_skips_and_is_byte_identical(synth_split, mask_run, tmp_path):
    out_split, _ = mask_run
    before = tree_bytes(out_split)
    res = run_cli(synth_split.parent, out_split.parent, "--matter", "mask")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out_split / schema.RUN_JSON).read_text())["summary"]["shards_done"] == 0
    assert tree_bytes(out_split) == before
    # --shards redoes the named shard, with the same bytes
    marker = out_split / schema.shard_done(SPLIT, 1)
    marker.unlink()
    res = run_cli(synth_split.parent, out_split.parent, "--matter", "mask", "--shards", "0-1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out_split / schema.RUN_JSON).read_text())["summary"]["shards_done"] == 2
    assert tree_bytes(out_split) == before


def test_a_shard_cut_short_by_limit_videos_is_redone(synth_split, mask_run, tmp_path):
    """--limit-videos 2 with 3 videos per shard finishes shard 0 with 2 videos; the full run must
    redo it, not skip it (else the third video would be lost)."""
    out = tmp_path / "out"
    res = run_cli(synth_split.parent, out, "--matter", "mask", "--videos-per-shard", "3", "--limit-videos", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    marker = json.loads((out / SPLIT / schema.shard_done(SPLIT, 0)).read_text())
    assert len(marker[schema.MARKER_VIDEOS]) == 2
    res = run_cli(synth_split.parent, out, "--matter", "mask", "--videos-per-shard", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / SPLIT / schema.RUN_JSON).read_text())["summary"]
    assert summary["shards_done"] == 1 and summary["shards_skipped"] == 0
    assert {r["key"] for r in manifest(out / SPLIT)} == {r["key"] for r in manifest(mask_run[0])}


def test_changed_options_redo_and_changed_plan_refuses(synth_split, mask_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(mask_run[0], out / SPLIT)
    # other content options (auto masklets too): refused rather than mixed (issue 9) ...
    before = tree_bytes(out / SPLIT)
    res = run_cli(synth_split.parent, out, "--matter", "mask", "--masklets", "all")
    assert res.returncode == 2 and "content.masklets: 'manual' -> 'all'" in res.stderr, res.stderr[-2000:]
    assert tree_bytes(out / SPLIT) == before
    # ... and with --redo-mismatched every shard is redone, none skipped
    res = run_cli(synth_split.parent, out, "--matter", "mask", "--masklets", "all", "--redo-mismatched")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / SPLIT / schema.RUN_JSON).read_text())["summary"]
    assert summary["shards_skipped"] == 0 and summary["shards_done"] == 3
    assert any(r["source"] == "auto" for r in manifest(out / SPLIT))
    # another shard plan into the same output: refused, nothing touched
    before = tree_bytes(out / SPLIT)
    res = run_cli(synth_split.parent, out, "--matter", "mask", "--videos-per-shard", "2")
    assert res.returncode == 2 and "another shard plan" in res.stderr
    assert tree_bytes(out / SPLIT) == before


def test_fake_gpus_one_actor_each(synth_split, tmp_path):
    res = run_cli(synth_split.parent, tmp_path, "--matter", "mask", "--num-gpus", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    actors = json.loads((tmp_path / SPLIT / schema.RUN_JSON).read_text())["actors"]
    assert len(actors) == 2
    gpu_ids = [tuple(a["info"]["gpu_ids"]) for a in actors]
    assert all(len(g) == 1 for g in gpu_ids) and len(set(gpu_ids)) == 2
    assert sum(a["stats"]["segments"] for a in actors) > 0


def test_actor_death_is_retried(synth_split, mask_run, tmp_path):
    marker = tmp_path / "died"
    res = run_cli(synth_split.parent, tmp_path / "out", "--matter", "tests.matters_for_tests:DieOnceMatter",
                  "--matter-option", f"marker={marker}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists(), "the injected death never happened"
    died_pid = int(marker.read_text())
    run = json.loads((tmp_path / "out" / SPLIT / schema.RUN_JSON).read_text())
    assert run["actors"][0]["info"]["pid"] != died_pid  # a new actor process finished the work
    ok_new = [r["key"] for r in manifest(tmp_path / "out" / SPLIT) if r["status"] == "ok"]
    ok_ref = [r["key"] for r in manifest(mask_run[0]) if r["status"] == "ok"]
    assert ok_new == ok_ref


def test_shard_that_cannot_complete_fails_the_run(synth_split, tmp_path):
    res = run_cli(synth_split.parent, tmp_path, "--matter", "tests.matters_for_tests:DieAlwaysMatter",
                  "--max-restarts", "1", "--limit-videos", "1")
    assert res.returncode == 1
    assert "shard 0 FAILED" in res.stderr
    split = tmp_path / SPLIT
    assert not (split / schema.shard_done(SPLIT, 0)).exists()
    assert not (split / schema.shard_tar(SPLIT, 0)).exists()
    assert json.loads((split / schema.RUN_JSON).read_text())["summary"]["shards_failed"]


def test_matter_exception_is_a_failed_row(synth_split, tmp_path):
    res = run_cli(synth_split.parent, tmp_path, "--matter", "tests.matters_for_tests:FailOnKeyMatter")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = manifest(tmp_path / SPLIT)
    failed = [r for r in rows if r["error_type"] == "RuntimeError"]
    assert failed and all("injected matter failure" in r["error"] for r in failed)
    assert any(r["status"] == "ok" for r in rows)


def test_sigkill_then_resume_is_byte_identical(synth_split, tmp_path):
    matter = ("--matter", "tests.matters_for_tests:SlowMaskMatter", "--matter-option", "delay=0.4")
    unhurried = (*matter, "--matter-option", "delay=0")   # only the killed run needs to be slow (not fingerprinted)
    ref = tmp_path / "ref"
    assert run_cli(synth_split.parent, ref, *unhurried).returncode == 0
    n_shards = len(list((ref / SPLIT / "done").glob("*.json")))
    assert n_shards >= 2

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline.run", "--split", SPLIT, "--data-root", str(synth_split.parent),
           "--out", str(out), "--address", "local", "--num-cpus", "2", "--no-progress",
           "--videos-per-shard", "1", *matter]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = out / SPLIT / "done"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not list(done_dir.glob("*.json")):
            # no partial tar is ever visible under its final name
            for tar in (out / SPLIT / "shards").glob("*.tar") if (out / SPLIT / "shards").exists() else []:
                with tarfile.open(tar) as tf:
                    tf.getmembers()
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    finished = sorted(p.name for p in done_dir.glob("*.json"))
    assert 1 <= len(finished) < n_shards, f"kill came too late or too early: {finished}"
    stamps = {p.name: p.stat().st_mtime_ns for p in done_dir.glob("*.json")}

    res = run_cli(synth_split.parent, out, *unhurried)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / SPLIT / schema.RUN_JSON).read_text())["summary"]
    assert summary["shards_skipped"] == len(finished)
    assert summary["shards_done"] == n_shards - len(finished)
    assert all((done_dir / n).stat().st_mtime_ns == t for n, t in stamps.items())  # untouched
    assert tree_bytes(out / SPLIT) == tree_bytes(ref / SPLIT)


def test_videomama_tiny_checkpoint_through_the_job(synth_split, tmp_path):
    """The production matter, loaded from a checkpoint folder by the actor, end to end."""
    tiny = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "models.tiny", "--out", str(tiny)], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    res = run_cli(synth_split.parent, tmp_path / "out", "--matter", "videomama", "--checkpoint",
                  str(tiny / "checkpoint"), "--base-model", str(tiny / "base"), "--long-side", "128",
                  "--limit-videos", "1", "--frames", "none")
    assert res.returncode == 0, res.stderr[-3000:]
    split = tmp_path / "out" / SPLIT
    rows = manifest(split)
    assert rows and all(r["status"] == "ok" and r["matter"] == "videomama" for r in rows)
    run = json.loads((split / schema.RUN_JSON).read_text())
    assert len(run["checkpoint_sha256"]) == 64
    assert run["matter"]["checkpoint"].endswith("checkpoint")


def test_help_explains_every_flag():
    res = subprocess.run([sys.executable, "-m", "pipeline.run", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0
    for flag in ("--split", "--data-root", "--out", "--matter", "--checkpoint", "--base-model", "--masklets",
                 "--segment-len", "--videos-per-shard", "--shards", "--retry-failed", "--limit-videos", "--frames"):
        assert flag in res.stdout


def test_reader_stream_turns_unexpected_errors_into_rows(synth_split):
    """read_video (the Ray reader task body) never raises: a reader bug becomes failed rows."""
    import dataclasses

    from pipeline.protocol import Chunk, Failure, VideoHeader
    from pipeline.reader import read_video
    from pipeline.writer import failure_row

    ref = list_videos(str(synth_split))[0]
    broken = dataclasses.replace(ref, layout="no-such-layout", video_url=None)
    items = list(read_video(broken, ReaderConfig()))
    assert len(items) == 1 and isinstance(items[0], VideoHeader) and items[0].keys == []
    (row,) = [failure_row(f) for f in items[0].failures]
    assert row["key"] == schema.video_failure_key(ref.video_id) and row["status"] == "failed"
    assert row["error_type"] == "ReaderError" and "Error" in row["error"]

    cfg = ReaderConfig(chunk=3)
    good = list(read_video(ref, cfg))
    header, chunks = good[0], good[1:]
    assert isinstance(header, VideoHeader) and all(isinstance(c, Chunk) for c in chunks)
    assert [c.keys for c in chunks] == header.chunks() and sum(header.chunks(), []) == header.keys
    assert all(len(c.items) == 3 for c in chunks[:-1]) and not any(isinstance(i, Failure) for c in chunks for i in c.items)
    resumed = list(read_video(ref, cfg, start_chunk=2))   # a stream resumed after its reader died
    assert resumed[0] == header and [c.keys for c in resumed[1:]] == header.chunks()[2:]


def test_encode_turns_a_wrong_matte_into_a_row(synth_split):
    from pipeline.reader import read_segments
    from pipeline.encode import EncodedSample, encode_one as encode
    from pipeline.writer import failure_row

    cfg = ReaderConfig()
    plan = plan_video(list_videos(str(synth_split))[0], cfg)
    data = next(iter(read_segments(plan, cfg)))
    t, h, w = data.masks.shape
    ok = encode(data, np.zeros((t, h, w), np.uint8), "m", "jpg")
    assert isinstance(ok, EncodedSample) and ok.row["status"] == "ok"
    bad = failure_row(encode(data, np.zeros((t, h // 2, w), np.uint8), "m", "jpg"))
    assert isinstance(bad, dict) and bad["status"] == "failed" and bad["error_type"] == "ValueError"
    assert bad["key"] == data.segment.key and "does not match" in bad["error"]


def test_the_actor_gives_matters_the_sample_keys(synth_split, tmp_path):
    """Matters that take ``keys`` get each segment's key (VideoMaMa seeds its noise from it)."""
    from tests.matters_for_tests import key_level

    res = run_cli(synth_split.parent, tmp_path, "--matter", "tests.matters_for_tests:KeyedMatter",
                  "--batch-size", "2", "--limit-videos", "1", "--frames", "none")
    assert res.returncode == 0, res.stderr[-2000:]
    n = 0
    for s in wds.WebDataset(str(tmp_path / SPLIT / schema.shard_tar(SPLIT, 0)), shardshuffle=False):
        alpha = np.asarray(Image.open(io.BytesIO(s[schema.alpha_ext(0)])))
        assert set(np.unique(alpha)) <= {0, key_level(s["__key__"])} and alpha.max() > 0
        n += 1
    assert n >= 2
