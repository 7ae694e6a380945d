"""Issue 20: a careless operator against the wave-2 tools. Every scenario of the issue is a test here.

One reference output per module: the real job (``pipeline.run --matter mask --videos-per-shard 2``) on
a generated 4-video split (20 samples in 2 shards). Each test works on a copy. Job reruns run in the
test session's shared job server (``tests.job_cli.JobServer``); refusals happen before Ray starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from benchmarks.exit_loop import loop
from mava import schema
from mava.__main__ import main as mava_main
from mava.loaders import ClipConfig, RandomAccessClips, StreamingClips, choose_indices, clip_rng
from mava.sample import SampleError
from mava.state import NotASplit
from tests.job_cli import REPO, SPLIT, manifest, run_cli, run_cli_many, tree_bytes

MASK = ["--matter", "mask"]
PLAN2 = ["--videos-per-shard", "2"]
ALPHA = ClipConfig(fields=("alpha",))


@pytest.fixture(scope="module")
def data4(tmp_path_factory) -> Path:
    """A generated SA-V train split of 4 videos (``<root>/sav_train``)."""
    from pipeline import synth

    root = tmp_path_factory.mktemp("hostile_data")
    bg = str(synth.DEFAULT_BG) if synth.DEFAULT_BG.exists() else ""
    return synth.generate_split(root, synth.make_specs(4, 60, seed=1, sizes=["160x96", "96x160"], background=bg),
                                SPLIT, gt=False)


@pytest.fixture(scope="module")
def ref(data4, tmp_path_factory) -> Path:
    """The reference output split folder (read-only): mask matter, 2 videos per shard."""
    out = tmp_path_factory.mktemp("hostile_ref")
    res = run_cli(data4.parent, out, *MASK, *PLAN2)
    assert res.returncode == 0, res.stderr[-3000:]
    d = out / SPLIT
    assert len(list((d / "done").glob("*.json"))) == 2 and len(manifest(d)) == 20
    return d


def _copy(ref: Path, tmp_path: Path, name: str = "out") -> Path:
    """A copy of the reference under ``tmp_path/name/sav_train``; returns the split folder."""
    dst = tmp_path / name / SPLIT
    shutil.copytree(ref, dst)
    return dst


def _one_line(err: str, prefix: str = "") -> None:
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(prefix), err


def _ok(d: Path, shard: int | None = None) -> list[dict]:
    rows = [r for r in manifest(d) if r["status"] == "ok"]
    name = None if shard is None else schema.shard_name(SPLIT, shard)
    return [r for r in rows if name is None or r["shard"] == name]


def _mava(capsys, *argv) -> tuple[int, str, str]:
    rc = mava_main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# --- 1. a changed shard plan never destroys finished work ------------------------------------------


def test_another_plan_refuses_whatever_else_is_asked(data4, ref, tmp_path):
    """2 -> 1 with --shards 0 ran (exit 0, 3 shards lost); 2 -> 1 with another matter overwrote every
    shard; now every change of --videos-per-shard, in both directions, refuses in one line."""
    d = _copy(ref, tmp_path)
    before = tree_bytes(d)
    asks = [["--videos-per-shard", "1", "--shards", "0"], ["--videos-per-shard", "1", "--matter", "guided"],
            ["--videos-per-shard", "1"], ["--videos-per-shard", "1", "--redo-mismatched"],
            ["--videos-per-shard", "1", "--retry-failed"], ["--videos-per-shard", "1", "--limit-videos", "2"],
            ["--videos-per-shard", "3"], ["--videos-per-shard", "4", "--redo-mismatched", "--retry-failed"],
            ["--videos-per-shard", "1", "--shards", "0", "--redo-mismatched", "--matter", "guided"]]
    runs = run_cli_many(data4.parent, d.parent, [MASK + a for a in asks], fresh=True)
    for a, r in zip(asks, runs):
        assert r["rc"] == 2, (a, r["stderr"][-800:])
        _one_line(r["stderr"], "python -m pipeline.run: error:")
        new = a[a.index("--videos-per-shard") + 1]
        assert "another shard plan" in r["stderr"] and "--videos-per-shard 2" in r["stderr"], r["stderr"]
        assert f"--videos-per-shard {new}" in r["stderr"] and "--replan" in r["stderr"], r["stderr"]
    assert tree_bytes(d) == before
    assert [r["ray"] for r in runs] == [False] * len(asks)  # refused before any work: Ray never started


@pytest.mark.parametrize("damage", ["deleted", "emptied", "{}", "null", "foreign", "no-plan-json"])
def test_a_damaged_marker_never_lets_another_plan_in(data4, ref, tmp_path, damage):
    """A deleted done marker followed by --videos-per-shard 4 wrote 30 rows for 20 keys."""
    d = _copy(ref, tmp_path)
    marker = d / schema.shard_done(SPLIT, 1)
    if damage == "deleted":
        marker.unlink()
    elif damage == "emptied":
        marker.write_bytes(b"")
    elif damage in ("{}", "null"):
        marker.write_text(damage)
    elif damage == "foreign":
        marker.write_bytes((d / schema.shard_done(SPLIT, 0)).read_bytes())
    else:  # nothing left that names the plan but the markers themselves
        marker.unlink()
        (d / schema.PLAN_JSON).unlink()
        (d / schema.RUN_JSON).unlink()
    before = tree_bytes(d)
    runs = run_cli_many(data4.parent, d.parent, [MASK + ["--videos-per-shard", "4"],
                                                 MASK + ["--videos-per-shard", "1", "--redo-mismatched"]])
    for r in runs:
        assert r["rc"] == 2, r["stderr"][-800:]
        _one_line(r["stderr"], "python -m pipeline.run: error:")
        assert "another shard plan" in r["stderr"] and "--videos-per-shard 2" in r["stderr"], r["stderr"]
    assert tree_bytes(d) == before


@pytest.fixture(scope="module")
def marker_cases(data4, ref, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Reruns of the same command (same plan) over outputs whose marker of shard 1 is deleted, emptied,
    ``{}``, ``null``, another shard's, or another plan's: (split folder, run result) per case."""
    root = tmp_path_factory.mktemp("markers")
    cases = {}
    for case in ("deleted", "emptied", "{}", "null", "foreign", "other-plan"):
        d = _copy(ref, root, case.replace("{}", "braces"))
        marker = d / schema.shard_done(SPLIT, 1)
        if case == "deleted":
            marker.unlink()
        elif case == "emptied":
            marker.write_bytes(b"")
        elif case in ("{}", "null"):
            marker.write_text(case)
        elif case == "foreign":
            marker.write_bytes((d / schema.shard_done(SPLIT, 0)).read_bytes())
        else:  # what a 1-video-per-shard run writes for shard 1
            m = json.loads(marker.read_text())
            m[schema.MARKER_PLAN] = {**m.get(schema.MARKER_PLAN, {}), schema.PLAN_VIDEOS_PER_SHARD: 1}
            m[schema.MARKER_VIDEOS] = m[schema.MARKER_VIDEOS][:1]
            marker.write_text(json.dumps(m))
        cases[case] = d
    runs = run_cli_many(data4.parent, root, [MASK + PLAN2 + ["--out", str(d.parent)] for d in cases.values()])
    return {c: (d, r) for (c, d), r in zip(cases.items(), runs)}


@pytest.mark.parametrize("case", ["deleted", "emptied", "{}", "null", "foreign", "other-plan"])
def test_a_marker_is_trusted_only_for_this_plans_videos(marker_cases, ref, case, capsys):
    """Every case ends in a refusal or a rebuilt shard, never in a mixed output."""
    d, r = marker_cases[case]
    if case == "deleted":  # a shard without marker is unfinished: rebuilt, byte for byte
        assert r["rc"] == 0, r["stderr"][-800:]
        assert tree_bytes(d) == tree_bytes(ref)
    else:
        assert r["rc"] == 2, r["stderr"][-800:]
        _one_line(r["stderr"], "python -m pipeline.run: error:")
        assert "--redo-mismatched" in r["stderr"] and "shard 1" in r["stderr"]
        assert (d / schema.shard_manifest(SPLIT, 1)).read_bytes() == (ref / schema.shard_manifest(SPLIT, 1)).read_bytes()
    rows = manifest(d)
    assert len(rows) == len({x["key"] for x in rows}) == 20


def test_replan_rewrites_the_whole_output(data4, ref, tmp_path):
    d = _copy(ref, tmp_path)
    runs = run_cli_many(data4.parent, d.parent, [
        MASK + ["--videos-per-shard", "1", "--replan", "--shards", "0"],   # a partial re-plan: refused
        MASK + ["--videos-per-shard", "1", "--replan"],                    # the whole output, one plan
        MASK + PLAN2,                                                      # the old plan now refuses
        MASK + ["--videos-per-shard", "1"],                                # the new plan: all skipped
    ])
    assert [r["rc"] for r in runs] == [2, 0, 2, 0], [r["stderr"][-600:] for r in runs]
    assert "--replan" in runs[0]["stderr"] and "--shards" in runs[0]["stderr"]
    assert "--videos-per-shard 1" in runs[2]["stderr"] and "--videos-per-shard 2" in runs[2]["stderr"]
    assert json.loads((d / schema.PLAN_JSON).read_text())[schema.PLAN_VIDEOS_PER_SHARD] == 1
    markers = sorted((d / "done").glob("*.json"))
    assert len(markers) == len(list((d / "shards").glob("*.tar"))) == len(list((d / "manifest").glob("*"))) == 4
    for i, p in enumerate(markers):
        m = json.loads(p.read_text())
        assert m[schema.MARKER_PLAN][schema.PLAN_VIDEOS_PER_SHARD] == 1 and m[schema.MARKER_VIDEOS] == [f"sav_{i + 1:06d}"]
    rows = manifest(d)
    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in manifest(ref))
    assert json.loads((d / schema.RUN_JSON).read_text())["summary"]["shards_skipped"] == 4
    assert subprocess.run([sys.executable, "-m", "mava", "verify", str(d), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True).returncode == 0


def test_a_split_that_grew_or_lost_videos(data4, ref, tmp_path):
    """Videos appended to the split: the same plan keeps the finished shards and writes the new ones.
    A video gone from the middle of the list moves the next ones to other shards: refused, named."""
    from pipeline import synth

    grown = tmp_path / "grown"
    shutil.copytree(data4, grown / SPLIT)
    fifth = synth.make_specs(5, 60, seed=1, sizes=["160x96", "96x160"])[4:]
    synth.generate_split(grown, fifth, SPLIT, gt=False)
    lost = tmp_path / "lost"
    shutil.copytree(data4, lost / SPLIT)
    for p in (lost / SPLIT).rglob("sav_000002*"):
        p.unlink()
    d_grown, d_lost = _copy(ref, tmp_path, "out_grown"), _copy(ref, tmp_path, "out_lost")
    lost_before = tree_bytes(d_lost)
    runs = run_cli_many(data4.parent, tmp_path, [
        MASK + PLAN2 + ["--data-root", str(grown), "--out", str(d_grown.parent)],
        MASK + PLAN2 + ["--data-root", str(lost), "--out", str(d_lost.parent)]])
    assert runs[0]["rc"] == 0, runs[0]["stderr"][-800:]
    summary = json.loads((d_grown / schema.RUN_JSON).read_text())["summary"]
    assert summary["shards_skipped"] == 2 and summary["shards_done"] == 1
    for i in (0, 1):
        assert (d_grown / schema.shard_tar(SPLIT, i)).read_bytes() == (ref / schema.shard_tar(SPLIT, i)).read_bytes()
    assert {r["video_id"] for r in manifest(d_grown)} == {f"sav_{i:06d}" for i in range(1, 6)}
    assert runs[1]["rc"] == 2 and "this plan puts" in runs[1]["stderr"] and "--redo-mismatched" in runs[1]["stderr"]
    _one_line(runs[1]["stderr"], "python -m pipeline.run: error:")
    assert tree_bytes(d_lost) == lost_before


# --- 2. mava export owns its output folder ---------------------------------------------------------


def _two_masklets(d: Path) -> list[tuple[str, int]]:
    clips = sorted({(r["video_id"], r["masklet_id"]) for r in _ok(d)})
    vid = clips[0][0]
    return [c for c in clips if c[0] == vid][:2]


def test_export_into_a_reused_folder(ref, tmp_path, capsys):
    """Exporting masklet 0, then masklet 2, into one folder mixed both in alpha/."""
    (vid, m0), (_, m1) = _two_masklets(ref)
    out = tmp_path / "matte"
    assert _mava(capsys, "export", ref, "--video-id", vid, "--masklet", m0, "--out", out)[0] == 0
    first = sorted(p.name for p in (out / "alpha").iterdir())
    rc, _, err = _mava(capsys, "export", ref, "--video-id", vid, "--masklet", m1, "--out", out)
    assert rc == 2 and "not empty" in err and "--overwrite" in err
    _one_line(err, "error:")
    assert sorted(p.name for p in (out / "alpha").iterdir()) == first   # untouched
    rc, _, err = _mava(capsys, "export", ref, "--video-id", vid, "--masklet", m1, "--out", out, "--overwrite")
    assert rc == 0, err
    rep = json.loads((out / "export.json").read_text())
    ann = sorted({a for r in _ok(ref) if (r["video_id"], r["masklet_id"]) == (vid, m1) for a in r["ann_frames"]})
    assert rep["masklet_id"] == m1 and sorted(int(p.stem) for p in (out / "alpha").iterdir()) == ann
    # a failed export (unknown masklet) leaves the earlier one as it was
    rc, _, err = _mava(capsys, "export", ref, "--video-id", vid, "--masklet", 99, "--out", out, "--overwrite")
    assert rc == 2 and json.loads((out / "export.json").read_text()) == rep


@pytest.mark.parametrize("conflict", ["out-is-a-file", "alpha-is-a-file", "foreign-file", "under-a-file"])
def test_export_path_conflicts_are_one_line(ref, tmp_path, capsys, conflict):
    vid, m = _two_masklets(ref)[0]
    out = tmp_path / "matte"
    if conflict == "out-is-a-file":
        out.write_text("x")
    elif conflict == "under-a-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "matte"
    else:
        out.mkdir()
        (out / ("alpha" if conflict == "alpha-is-a-file" else "notes.txt")).write_text("mine")
    for extra in ([], ["--overwrite"]):
        rc, _, err = _mava(capsys, "export", ref, "--video-id", vid, "--masklet", m, "--out", out, *extra)
        assert rc == 2, err
        _one_line(err, "error:")
    if conflict in ("alpha-is-a-file", "foreign-file"):
        assert sorted(p.name for p in out.iterdir()) == ["alpha" if conflict == "alpha-is-a-file" else "notes.txt"]


#: runs of the export error path (MAVA_EXIT_LOOP_RUNS overrides; each forked from one process that
#: imported mava: ~0.2 CPU-s a run instead of ~0.55 for a fresh interpreter)
EXIT_LOOP_RUNS = int(os.environ.get("MAVA_EXIT_LOOP_RUNS", "200"))


@pytest.mark.slow
def test_export_error_path_never_aborts_at_exit(ref, tmp_path):
    """The error path (no ok samples) aborted with exit 134 ('terminate called without an active
    exception': a native thread still running at interpreter exit) in 4 of ~96 runs: 200 runs, 4 at a
    time, each must exit 2 with its one line."""
    res = loop(["-m", "mava", "export", str(ref), "--video-id", "nope", "--masklet", "0", "--out", str(tmp_path / "x")],
               EXIT_LOOP_RUNS, workers=4, expect=2, timeout=120, fork=True)
    bad = [(code, err[-300:]) for code, err in res.each if code != 2 or err.count("\n") != 1]
    assert len(res.each) == EXIT_LOOP_RUNS and not bad, (res.render(), bad[:3])
    assert all(err.startswith("error: no ok samples of video 'nope'") for _, err in res.each)


# --- 3. loaders serve only what the manifest vouches for -------------------------------------------


def test_a_swapped_tar_is_not_served(ref, tmp_path, capsys):
    """Shard 0's tar copied over shard 1's: 20 clips, 10 distinct, bad_samples 0, even with 'raise'."""
    d = _copy(ref, tmp_path)
    shutil.copyfile(d / schema.shard_tar(SPLIT, 0), d / schema.shard_tar(SPLIT, 1))
    good = {r["key"] for r in _ok(d, 0)}
    lost = {r["key"] for r in _ok(d, 1)}
    with pytest.raises(SampleError, match=schema.shard_name(SPLIT, 1)):
        list(StreamingClips(str(d), ALPHA, shuffle_shards=False))
    s = StreamingClips(str(d), ALPHA, on_error="skip")
    keys = [c["key"] for c in s]
    assert sorted(keys) == sorted(good) and s.bad_samples == len(lost)
    with pytest.raises(SampleError, match=schema.shard_name(SPLIT, 1)):
        RandomAccessClips(str(d), ALPHA).by_key(sorted(lost)[0])
    ra = RandomAccessClips(str(d), ALPHA, on_error="skip")
    assert {ra[i]["key"] for i in range(len(ra))} == good and ra.bad_samples == len(lost)
    rc, out, _ = _mava(capsys, "stats", d)   # (tars are padded to 10 KiB records: often the same size)
    assert rc == 1 and f"{schema.shard_tar(SPLIT, 1)}: " in out and "not the tar" in out


def test_a_path_that_is_not_a_split_raises_one_clear_error(ref, tmp_path):
    """A mistyped path, or a split with no done markers, was a silent empty dataset (len 0)."""
    d = _copy(ref, tmp_path)
    for p in (d / "done").glob("*.json"):
        p.unlink()
    for path, why in ((tmp_path / "out" / "sav_trian", "does not exist"), (d, "no finished shard")):
        for loader in (RandomAccessClips, StreamingClips):
            with pytest.raises(NotASplit, match=why) as e:
                loader(str(path), ALPHA)
            assert str(path) in str(e.value) and "\n" not in str(e.value)


def _truncate_mid_sample(d: Path, shard: int, nth: int) -> list[str]:
    """Cut a shard's tar in the middle of its nth sample; the keys whose bytes are cut off."""
    rows = sorted(_ok(d, shard), key=lambda r: r["tar_offset"])
    cut = rows[nth]["tar_offset"] + rows[nth]["tar_size"] // 2
    tar = d / schema.shard_tar(SPLIT, shard)
    tar.write_bytes(tar.read_bytes()[:cut])
    return [r["key"] for r in rows[nth:]]


def test_a_truncated_tar_counts_each_bad_sample_once(ref, tmp_path, caplog):
    """Random access counted 21 bad samples for 6 (of 20); streaming counted the tar twice and one
    warning named 'shard ?'."""
    d = _copy(ref, tmp_path)
    lost = _truncate_mid_sample(d, 1, 2)
    want = {r["key"] for r in _ok(d)} - set(lost)
    ra = RandomAccessClips(str(d), ALPHA, on_error="skip")
    assert {ra[i]["key"] for i in range(len(ra))} == want and ra.bad_samples == len(lost)
    ra.set_epoch(1)
    assert {ra[i]["key"] for i in range(len(ra))} == want and ra.bad_samples == 2 * len(lost)  # once per epoch
    ra.set_epoch(2)  # two DataLoader workers meet the same bad items: still counted once
    dl = torch.utils.data.DataLoader(ra, batch_size=2, num_workers=2, collate_fn=lambda b: [c["key"] for c in b])
    assert {k for batch in dl for k in batch} == want and ra.bad_samples == 3 * len(lost)
    caplog.clear()
    s = StreamingClips(str(d), ALPHA, on_error="skip")
    assert {c["key"] for c in s} == want and s.bad_samples == len(lost)
    skipped = [r.getMessage() for r in caplog.records if "skipped bad sample" in r.getMessage()]
    assert len(skipped) == len(lost) and all(schema.shard_tar(SPLIT, 1) in m for m in skipped)
    assert not any("shard ?" in r.getMessage() for r in caplog.records)


def test_a_sample_missing_members_is_bad_whatever_the_clip_window(ref, tmp_path):
    """A sample cut mid-way (its last two alpha PNGs gone) came out as a good clip when the clip
    window missed the gap."""
    d = _copy(ref, tmp_path)
    row = max(_ok(d, 1), key=lambda r: r["key"])  # the shard's last sample: no other offset moves
    n = row["num_frames"]
    assert n >= 4
    gone = {f"{row['key']}.{schema.alpha_ext(i)}" for i in (n - 2, n - 1)}
    tar = d / schema.shard_tar(SPLIT, 1)
    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.name not in gone]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m, data in members:
            dst.addfile(m, io.BytesIO(data))
    seed = next(s for s in range(100) if not {n - 2, n - 1} & set(choose_indices(n, 2, clip_rng(s, 0, row["key"]))))
    cfg = ClipConfig(clip_len=2, fields=("alpha",), seed=seed)  # this window never touches the gap
    for loader in (RandomAccessClips, StreamingClips):
        with pytest.raises(SampleError, match="member missing|does not read"):
            if loader is RandomAccessClips:
                loader(str(d), cfg).by_key(row["key"])
            else:
                list(loader(str(d), cfg, keys={row["key"]}))
        ds = loader(str(d), cfg, on_error="skip")
        keys = [ds[i]["key"] for i in range(len(ds))] if loader is RandomAccessClips else [c["key"] for c in ds]
        assert row["key"] not in keys and ds.bad_samples == 1


def _duplicate_shard(d: Path, src: int, dst: int) -> None:
    """A finished shard `dst` holding the same samples as shard `src` (what a mixed plan left)."""
    shutil.copyfile(d / schema.shard_tar(SPLIT, src), d / schema.shard_tar(SPLIT, dst))
    t = pq.read_table(d / schema.shard_manifest(SPLIT, src))
    t = t.set_column(t.schema.get_field_index("shard"), "shard",
                     pa.array([schema.shard_name(SPLIT, dst)] * t.num_rows, pa.string()))
    pq.write_table(t, d / schema.shard_manifest(SPLIT, dst))
    m = json.loads((d / schema.shard_done(SPLIT, src)).read_text())
    m[schema.MARKER_SHARD] = schema.shard_name(SPLIT, dst)
    m[schema.MARKER_MANIFEST_SHA256] = hashlib.sha256((d / schema.shard_manifest(SPLIT, dst)).read_bytes()).hexdigest()
    (d / schema.shard_done(SPLIT, dst)).write_text(json.dumps(m))


def test_duplicates_are_never_served_or_counted(ref, tmp_path, capsys):
    """30 manifest rows for 20 keys: stats, query and card (num_examples: 30) counted the duplicates."""
    d = _copy(ref, tmp_path)
    _duplicate_shard(d, 0, 2)
    keys = sorted(r["key"] for r in _ok(ref))
    rc, out, err = _mava(capsys, "stats", d, "--json")
    s = json.loads(out)
    assert rc == 1 and s["ok"] == len(keys) and any("more than one finished shard" in u for u in s["unreadable"])
    rc, out, err = _mava(capsys, "query", d, "select count(*) as n, count(distinct key) as k from manifest")
    assert rc == 0 and out.splitlines()[1] == f"{len(keys)}\t{len(keys)}" and "more than one finished shard" in err
    rc, _, err = _mava(capsys, "card", d, "--out", tmp_path / "card" / "README.md", "--previews", "0")
    head = (tmp_path / "card" / "README.md").read_text().split("---\n")[1]
    assert rc == 1 and f"num_examples: {len(keys)}" in head and "more than one finished shard" in err
    for loader in (RandomAccessClips, StreamingClips):
        ds = loader(str(d), ALPHA)
        got = [ds[i]["key"] for i in range(len(ds))] if loader is RandomAccessClips else [c["key"] for c in ds]
        assert sorted(got) == keys and ds.bad_samples == 0


# --- 4. every mava command on something that is not a finished MA-V split --------------------------


def _commands(path: Path, tmp_path: Path) -> dict[str, list]:
    return {"stats": ["stats", path], "card": ["card", path, "--out", tmp_path / "card" / "README.md"],
            "query": ["query", path, "select count(*) from manifest"], "verify": ["verify", path, "--no-progress"],
            "export": ["export", path, "--video-id", "sav_000001", "--masklet", "0", "--out", tmp_path / "e"],
            "preview": ["preview", path, "sav_000001_m000_0000", "--out", tmp_path / "p.png"],
            "eval": ["eval", path, "--gt", tmp_path / "gt", "--no-progress"]}


@pytest.mark.parametrize("what", ["missing", "empty", "a-file", "no-ma-v-files"])
def test_every_command_refuses_what_is_not_a_split(tmp_path, capsys, what):
    """stats and card on a nonexistent or empty folder exited 0, and the card was written."""
    path = tmp_path / "out" / SPLIT
    if what == "empty":
        path.mkdir(parents=True)
    elif what == "a-file":
        path.parent.mkdir(parents=True)
        path.write_text("not a split")
    elif what == "no-ma-v-files":
        (path / "shards").mkdir(parents=True)
        (path / "notes.txt").write_text("x")
    for cmd, argv in _commands(path, tmp_path).items():
        rc, out, err = _mava(capsys, *argv)
        assert rc == 2, (cmd, out, err)
        _one_line(err, "error:")
        assert str(path) in err, (cmd, err)
    assert not (tmp_path / "card").exists() and not (tmp_path / "e").exists()


def test_card_says_an_unreadable_run_json_on_the_terminal(ref, tmp_path, capsys):
    d = _copy(ref, tmp_path)
    (d / schema.RUN_JSON).write_bytes(b"{half a run.j")
    rc, _, err = _mava(capsys, "card", d, "--out", tmp_path / "card" / "README.md", "--previews", "0")
    assert rc == 1 and f"{d / schema.RUN_JSON}" in err and "unreadable JSON" in err
    assert "Warning" in (tmp_path / "card" / "README.md").read_text()


def test_an_interrupted_split_is_counted_by_its_finished_shards(ref, tmp_path, capsys):
    """card on an interrupted split counted the unfinished shard, without a warning."""
    d = _copy(ref, tmp_path)
    (d / schema.shard_done(SPLIT, 1)).unlink()      # killed before shard 1's marker
    n = len(_ok(d, 0))
    rc, _, err = _mava(capsys, "card", d, "--out", tmp_path / "card" / "README.md", "--previews", "1")
    head = (tmp_path / "card" / "README.md").read_text().split("---\n")[1]
    assert rc == 0 and f"num_examples: {n}" in head
    assert "warning:" in err and schema.shard_name(SPLIT, 1) in err and "not finished" in err
    rc, out, err = _mava(capsys, "stats", d, "--json")
    assert rc == 0 and json.loads(out)["ok"] == n and schema.shard_name(SPLIT, 1) in err
    rc, out, err = _mava(capsys, "query", d, "select count(*) from manifest where status = 'ok'")
    assert rc == 0 and out.splitlines()[1] == str(n) and "not finished" in err


def test_card_out_naming_a_folder_is_one_line(ref, tmp_path, capsys):
    """card --out <folder> raised IsADirectoryError after writing figures/ next to it."""
    (tmp_path / "repo").mkdir()
    rc, _, err = _mava(capsys, "card", ref, "--out", tmp_path / "repo")
    assert rc == 2 and "is a folder" in err
    _one_line(err, "error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"] and not list((tmp_path / "repo").iterdir())


# --- 5. verify reads the split's identity from the output ------------------------------------------


def test_verify_passes_on_a_copy_under_another_name(ref, tmp_path, capsys):
    d = _copy(ref, tmp_path, "copy")
    renamed = d.parent / "my-matte-set"
    d.rename(renamed)
    rc, out, _ = _mava(capsys, "verify", renamed, "--no-progress")
    assert rc == 0 and out.strip().endswith("OK") and "2 shards of 2 planned" in out, out
    rc, out, _ = _mava(capsys, "stats", renamed)
    assert rc == 0 and out.startswith(f"split {SPLIT}:")


# --- the plan rules without a job (fast) -----------------------------------------------------------


class _Ref:
    def __init__(self, video_id: str):
        self.video_id = video_id


def _marked(tmp_path: Path, name: str, n_shards: int, vps: int, plan_json: bool = True) -> Path:
    """A split folder with done markers (and files) of `n_shards` shards written with `vps` per shard."""
    from pipeline import plan as planning

    d = tmp_path / name / SPLIT
    for sub in schema.SUBDIRS:
        (d / sub).mkdir(parents=True)
    for i in range(n_shards):
        videos = [f"v{j}" for j in range(i * vps, (i + 1) * vps)]
        (d / schema.shard_done(SPLIT, i)).write_text(json.dumps(
            {schema.MARKER_VIDEOS: videos, schema.MARKER_PLAN: planning.plan_record(vps)}))
        (d / schema.shard_tar(SPLIT, i)).write_bytes(b"t")
        (d / schema.shard_manifest(SPLIT, i)).write_bytes(b"m")
    if plan_json:
        (d / schema.PLAN_JSON).write_text(json.dumps(planning.plan_record(vps)))
    return d


def test_plan_rules(tmp_path):
    from pipeline import plan as planning

    def settle(d, videos, vps, **kw):
        plans = planning.plan_shards([_Ref(f"v{i}") for i in range(videos)], vps)
        return planning.settle_plan(str(d), SPLIT, plans, vps, **kw)

    d = _marked(tmp_path, "a", 2, 2)
    assert settle(d, 4, 2)[schema.PLAN_VIDEOS_PER_SHARD] == 2
    for vps in (1, 3, 4):
        with pytest.raises(planning.PlanConflict, match=f"--videos-per-shard 2, recorded in plan.json.*--videos-per-shard {vps}"):
            settle(d, 4, vps)
    with pytest.raises(planning.PlanConflict, match="cannot be combined with --shards"):
        settle(d, 4, 1, replan=True, shards={0})
    settle(d, 4, 1, replan=True)
    assert not list((d / "done").iterdir()) and not list((d / "shards").iterdir()) and not list((d / "manifest").iterdir())
    assert json.loads((d / schema.PLAN_JSON).read_text())[schema.PLAN_VIDEOS_PER_SHARD] == 1
    # the split lost videos: finished shards past the plan's end refuse, --limit-videos leaves them, --replan rewrites
    d = _marked(tmp_path, "b", 3, 2)
    with pytest.raises(planning.PlanConflict, match="past this plan's 2"):
        settle(d, 4, 2)
    settle(d, 4, 2, limited=True)
    assert (d / schema.shard_done(SPLIT, 2)).exists()
    settle(d, 4, 2, replan=True)
    assert not (d / schema.shard_done(SPLIT, 2)).exists()
    # plan.json unreadable; no plan.json and markers that disagree; only the markers left
    d = _marked(tmp_path, "c", 2, 2)
    (d / schema.PLAN_JSON).write_text("{")
    with pytest.raises(planning.PlanConflict, match="plan.json.*--replan"):
        settle(d, 4, 2)
    d = _marked(tmp_path, "d", 2, 2, plan_json=False)
    m = json.loads((d / schema.shard_done(SPLIT, 1)).read_text())
    (d / schema.shard_done(SPLIT, 1)).write_text(json.dumps({**m, schema.MARKER_PLAN: planning.plan_record(1)}))
    with pytest.raises(planning.PlanConflict, match="record different shard plans"):
        settle(d, 4, 2)
    d = _marked(tmp_path, "e", 2, 2, plan_json=False)
    with pytest.raises(planning.PlanConflict, match="recorded in its done markers"):
        settle(d, 4, 1)
    assert settle(d, 4, 2) and (d / schema.PLAN_JSON).exists()   # the same plan: recorded from now on
