"""Issue 9: exit 0 means the output on disk is exactly what the command line asked for.

Each test plays a hostile user on a real local Ray cluster (runs share one Ray session where they can,
see ``run_cli_many``) over the generated split of conftest ``synth_split`` (3 videos, 1 per shard).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest

from mava import schema
from mava.folder import SplitDir
from models.tiny import make_tiny
from tests.job_cli import COMMON, REPO, SPLIT, JobServer, manifest, planned_keys, run_cli, run_cli_many, tree_bytes

MASK = ["--matter", "mask"]
SLOW = "tests.matters_for_tests:SlowMaskMatter"


@pytest.fixture(scope="module")
def reference(synth_split, tmp_path_factory):
    """A clean ``--matter mask`` output of the whole split (read-only)."""
    out = tmp_path_factory.mktemp("trust_ref")
    res = run_cli(synth_split.parent, out, *MASK)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / SPLIT


def _copy(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out / SPLIT)
    return out


# --- 1. models are never mixed across reruns -------------------------------------------------------


def test_another_model_or_option_refuses_and_redo_mismatched_redoes(synth_split, tmp_path):
    ckpt_a, base_a = make_tiny(tmp_path / "tiny_a", seed=0)
    ckpt_b, base_b = make_tiny(tmp_path / "tiny_b", seed=1)
    common = ["--matter", "videomama", "--long-side", "128", "--limit-videos", "1", "--frames", "none"]
    a = common + ["--checkpoint", str(ckpt_a), "--base-model", str(base_a)]
    b = common + ["--checkpoint", str(ckpt_b), "--base-model", str(base_b)]
    out = tmp_path / "out"
    runs = run_cli_many(synth_split.parent, out, [
        a,                                    # writes shard 0 with model A
        b,                                    # another checkpoint: refused
        a + ["--long-side", "192"],           # another resolution: refused
        a + ["--posterior", "mode"],          # another posterior: refused
        a + ["--decode-chunk", "4"],          # another decode grouping: refused
        a + ["--dtype", "fp32"],              # 'auto' resolves to fp32 on CPU: the same mattes, skipped
        a + ["--batch-size", "2"],            # speed only: skipped
        b + ["--redo-mismatched"],            # asked for: redone with model B
        # options every matter fingerprints as configured are refused before the model loads (no
        # checkpoint here: loading it would fail the run with another error)
        common + ["--checkpoint", str(tmp_path / "gone"), "--base-model", str(base_b), "--long-side", "192",
                  "--frames", "jpg"],
    ])
    assert [r["rc"] for r in runs] == [0, 2, 2, 2, 2, 0, 0, 0, 2], [r["stderr"][-500:] for r in runs]
    assert ("matter.options.long_side: 128 -> 192" in runs[8]["stderr"]
            and "content.frames: 'none' -> 'jpg'" in runs[8]["stderr"]), runs[8]["stderr"][-1000:]
    assert "shard 0: matter.weights_sha256" in runs[1]["stderr"] and "--redo-mismatched" in runs[1]["stderr"]
    assert "matter.options.long_side: 128 -> 192" in runs[2]["stderr"]
    assert "matter.options.posterior: 'sample' -> 'mode'" in runs[3]["stderr"]
    assert "matter.options.decode_chunk" in runs[4]["stderr"]
    assert all("Traceback" not in r["stderr"] for r in runs)
    marker = json.loads((out / SPLIT / schema.shard_done(SPLIT, 0)).read_text())
    run = json.loads((out / SPLIT / schema.RUN_JSON).read_text())
    assert marker[schema.MARKER_FINGERPRINT] == run["fingerprint"]
    assert marker[schema.MARKER_FINGERPRINT]["matter"]["weights_sha256"] == run["checkpoint_sha256"]
    assert len(run["history"]) == 3 and run["history"][-1]["summary"]["shards_skipped"] == 1  # refusals write nothing
    first = run["history"][0]["fingerprint"]["matter"]["weights_sha256"]
    assert first != run["checkpoint_sha256"]                  # model B replaced model A everywhere


def test_a_matter_fingerprinting_an_option_otherwise_than_configured_is_refused(synth_split, tmp_path):
    """Refusing before the matter loads relies on every option not declared ``resolved`` being
    fingerprinted as configured: a matter that breaks it is a one-line error, and nothing is written."""
    res = run_cli(synth_split.parent, tmp_path / "out", "--matter", "tests.matters_for_tests:UndeclaredResolveMatter",
                  "--limit-videos", "1")
    assert res.returncode == 2 and "seed: configured 0, fingerprinted 1" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "out" / SPLIT / "done").glob("*"))


# --- 2. system failures are not "done" -------------------------------------------------------------


def test_cuda_errors_fail_the_run_and_leave_nothing_done(synth_split, tmp_path):
    runs = run_cli_many(synth_split.parent, tmp_path / "oom", [
        ["--matter", "tests.matters_for_tests:OomMatter", "--max-restarts", "1", "--limit-videos", "2"],
        MASK + ["--limit-videos", "2"],       # the GPU works again: nothing was skipped
    ])
    assert runs[0]["rc"] == 1 and "shard 0 FAILED" in runs[0]["stderr"] and "shard 1 FAILED" in runs[0]["stderr"]
    split = tmp_path / "oom" / SPLIT
    assert runs[1]["rc"] == 0, runs[1]["stderr"][-2000:]
    run = json.loads((split / schema.RUN_JSON).read_text())
    assert run["summary"]["shards_done"] == 2 and run["summary"]["shards_skipped"] == 0
    assert run["history"][-1]["summary"]["shards_failed"] and not run["history"][-1]["summary"]["samples_ok"]
    assert all(r["status"] == "ok" for r in manifest(split))


def test_a_passing_cuda_error_is_retried_on_a_fresh_actor(synth_split, reference, tmp_path):
    marker = tmp_path / "oom-once"
    res = run_cli(synth_split.parent, tmp_path / "out", "--matter", "tests.matters_for_tests:OomOnceMatter",
                  "--matter-option", f"marker={marker}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists() and "system error in matter" in res.stderr
    run = json.loads((tmp_path / "out" / SPLIT / schema.RUN_JSON).read_text())
    assert run["actors"][0]["info"]["pid"] != int(marker.read_text())
    rows = manifest(tmp_path / "out" / SPLIT)
    assert [r["key"] for r in rows if r["status"] == "ok"] == [r["key"] for r in manifest(reference) if r["status"] == "ok"]


def test_a_matter_failing_on_most_samples_does_not_mark_shards_done(synth_split, tmp_path):
    runs = run_cli_many(synth_split.parent, tmp_path / "out", [
        ["--matter", "tests.matters_for_tests:AlwaysWrongMatter", "--limit-videos", "1"],
        ["--matter", "tests.matters_for_tests:AlwaysWrongMatter", "--limit-videos", "1",
         "--max-matter-failures", "1"],
    ])
    assert runs[0]["rc"] == 1 and "more than --max-matter-failures 0.5" in runs[0]["stderr"]
    assert runs[1]["rc"] == 0
    rows = manifest(tmp_path / "out" / SPLIT)
    assert rows and all(r["error_type"] == "ValueError" for r in rows)


# --- 3. a marker is trusted only with its files ----------------------------------------------------


def test_damaged_shards_are_redone(synth_split, reference, tmp_path):
    out = _copy(reference, tmp_path)
    split = out / SPLIT
    (split / schema.shard_tar(SPLIT, 0)).unlink()                                 # tar deleted
    (split / schema.shard_manifest(SPLIT, 1)).write_bytes(b"garbage, not parquet")  # manifest garbled
    tar2 = split / schema.shard_tar(SPLIT, 2)
    blob = bytearray(tar2.read_bytes())
    blob[1000] ^= 0xFF                                                              # same size, other bytes
    tar2.write_bytes(bytes(blob))
    runs = run_cli_many(synth_split.parent, out, [MASK + ["--retry-failed"], MASK, MASK + ["--verify-skipped"]])
    assert [r["rc"] for r in runs] == [0, 0, 0], [r["stderr"][-800:] for r in runs]
    run = json.loads((split / schema.RUN_JSON).read_text())
    assert [h["summary"]["shards_done"] for h in run["history"][-2:]] + [run["summary"]["shards_done"]] == [2, 0, 1]
    assert "is damaged" in runs[0]["log"]
    assert tree_bytes(split) == tree_bytes(reference)


def test_unreadable_marker_names_the_file(synth_split, reference, tmp_path):
    out = _copy(reference, tmp_path)
    marker = out / SPLIT / schema.shard_done(SPLIT, 1)
    marker.write_bytes(marker.read_bytes()[:40])    # half-written
    runs = run_cli_many(synth_split.parent, out, [MASK, MASK + ["--redo-mismatched"]])
    assert runs[0]["rc"] == 2 and str(marker) in runs[0]["stderr"] and "--redo-mismatched" in runs[0]["stderr"]
    assert "Traceback" not in runs[0]["stderr"]
    assert runs[1]["rc"] == 0
    assert tree_bytes(out / SPLIT) == tree_bytes(reference)


# --- 4. run.json is replaced atomically ------------------------------------------------------------


def test_an_empty_run_json_does_not_block_reruns(synth_split, reference, tmp_path):
    out = _copy(reference, tmp_path)
    (out / SPLIT / schema.RUN_JSON).write_bytes(b"")       # as left by a disk-full failure
    res = run_cli(synth_split.parent, out, *MASK)
    assert res.returncode == 0, res.stderr[-2000:]
    run = json.loads((out / SPLIT / schema.RUN_JSON).read_text())
    assert run["summary"]["shards_skipped"] == 3 and "unreadable_previous_run_json" in run["history"][0]


def test_atomic_file_leaves_the_old_file_when_writing_fails(tmp_path):
    d = SplitDir(str(tmp_path / SPLIT))
    d.make_layout()
    d.write_atomic(schema.RUN_JSON, b'{"old": 1}')
    with pytest.raises(OSError, match="disk full"):
        with d.atomic_file(schema.RUN_JSON) as f:
            f.write(b'{"new": ')
            raise OSError(28, "disk full")
    assert (tmp_path / SPLIT / schema.RUN_JSON).read_bytes() == b'{"old": 1}'
    assert d.temp_files() == []


# --- 5. one writer per output ----------------------------------------------------------------------


def test_a_second_run_on_the_same_output_refuses(synth_split, reference, tmp_path):
    """The first run in the test session's job server (its Ray session is up), the second a process of its
    own, refused by the lease before it would start a cluster."""
    out = tmp_path / "out"
    args = [*COMMON, "--data-root", str(synth_split.parent), "--out", str(out), "--matter", SLOW]
    server = JobServer.shared()
    server.submit([*args, "--matter-option", "delay=0.5"])
    lease = out / SPLIT / schema.LEASE_JSON
    try:
        deadline = time.time() + 120
        while not lease.exists() and time.time() < deadline and not server.answered():
            time.sleep(0.05)
        assert lease.exists() and not server.answered(), "the first run finished before the second could start"
        second = subprocess.run([sys.executable, "-m", "pipeline.run", *args], cwd=REPO, capture_output=True,
                                text=True, timeout=240)
    finally:
        first = server.result(args, timeout=300)   # (the server's next run must not read this one's answer)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"held by pid {server.proc.pid} on host {socket.gethostname()}" in second.stderr
    assert first.returncode == 0, first.stderr[-3000:]
    assert not lease.exists()
    assert {r["key"] for r in manifest(out / SPLIT)} == planned_keys(synth_split)
    assert not list((out / SPLIT).rglob(f"*{schema.TMP_SUFFIX}"))


def test_a_stale_lease_is_taken_over(synth_split, reference, tmp_path):
    out = _copy(reference, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = out / SPLIT / schema.LEASE_JSON
    stale = [{"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time(), "token": "x"},
             {"host": "another-host", "pid": 1, "heartbeat": time.time() - 3600, "token": "y"}]
    for holder in stale:
        lease.write_text(json.dumps(holder))
        res = run_cli(synth_split.parent, out, *MASK)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "taking over the stale lease" in res.stderr
        assert not lease.exists()


# --- 6. errors come first, in one line -------------------------------------------------------------


@pytest.mark.parametrize("args,expected", [
    (["--shards", "9-3"], "bad shard range '9-3'"),
    (["--shards", "abc"], "bad shard spec 'abc'"),
    (["--videos-per-shard", "0"], "--videos-per-shard: 0 is less than 1"),
    (["--batch-size", "-2"], "--batch-size: -2 is less than 1"),
    (["--long-side", "1000"], "not a multiple of 64"),
    (["--max-matter-failures", "2"], "not in [0, 1]"),
])
def test_argument_errors_are_one_line(tmp_path, args, expected):
    res = subprocess.run([sys.executable, "-m", "pipeline.run", "--split", SPLIT, "--out", str(tmp_path), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and expected in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_unwritable_out_and_empty_split_fail_before_any_work(synth_split, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = run_cli(synth_split.parent, blocker / "out", *MASK)
    assert res.returncode == 2 and "cannot write to the output folder" in res.stderr
    assert "Traceback" not in res.stderr and "Started a local Ray instance" not in res.stderr
    (tmp_path / "empty" / SPLIT).mkdir(parents=True)
    res = run_cli(tmp_path / "empty", tmp_path / "out", *MASK)
    assert res.returncode == 2 and "no videos found in" in res.stderr and str(tmp_path / "empty") in res.stderr
    assert "Started a local Ray instance" not in res.stderr


def test_a_local_cluster_that_cannot_start_is_one_line(synth_split, tmp_path):
    """Ray raises a bare exception when a new local node cannot start (its temp folder unusable here; an
    overloaded machine's startup timeout the same way): one line naming it, exit 2, the lease released."""
    (tmp_path / "a-file").write_text("not a folder")
    res = run_cli(synth_split.parent, tmp_path / "out", *MASK, env={"RAY_TMPDIR": str(tmp_path / "a-file" / "ray")})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: could not start a local Ray cluster: [Errno 20] Not a directory" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / SPLIT / schema.LEASE_JSON).exists()


# --- 7. rotated videos: the same samples from both decoders ----------------------------------------


def test_a_rotated_video_gives_the_same_samples_with_both_decoders(tmp_path):
    import io
    import tarfile

    from pipeline import synth

    specs = synth.make_specs(1, 24, seed=5, sizes=["96x160"], rotate=90)   # portrait, stored landscape + matrix
    split = synth.generate_split(tmp_path / "data", specs, SPLIT, gt=False)
    runs = run_cli_many(split.parent, tmp_path / "out", [
        MASK + ["--backend", "decord"], MASK + ["--backend", "pyav", "--out", str(tmp_path / "out_pyav")]])
    assert [r["rc"] for r in runs] == [0, 0], [r["stderr"][-1500:] for r in runs]
    tars = [tmp_path / d / SPLIT / schema.shard_tar(SPLIT, 0) for d in ("out", "out_pyav")]
    assert tars[0].read_bytes() == tars[1].read_bytes()     # same frames, same masks, same metadata
    with tarfile.open(tars[0]) as tf:
        metas = [json.load(tf.extractfile(m)) for m in tf.getmembers() if m.name.endswith(".json")]
        frame = tf.extractfile(next(m for m in tf.getmembers() if ".frame." in m.name)).read()
    assert metas and all(m["rotation"] == 90 and m["display_rotation"] == 90 for m in metas)
    assert all((m["height"], m["width"]) == (160, 96) for m in metas)
    from PIL import Image
    assert Image.open(io.BytesIO(frame)).size == (96, 160)
