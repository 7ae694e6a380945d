"""Damaged output on the user side (issue 9, items 3 and 8): loaders name the key, shard and member of a
bad sample and can skip and count it; `mava verify` and `mava stats` report unreadable manifests,
markers, tars and run.json instead of crashing, and verify reports planned shards that are missing.

All on copies of the real job output (conftest `job_output`)."""

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from mava import manifest as mf
from mava.folder import as_split, read_parquet_file
from mava import schema
from mava.__main__ import main
from mava.loaders import ClipConfig, RandomAccessClips, StreamingClips, sam2_collate
from mava.sample import SampleError

# every frame position decoded (shorter samples repeat positions), so the garbled frame is always read
ALL = ClipConfig(clip_len=12, size=(32, 48), fields=("alpha", "mask"))


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name  # keep the split name: shard names start with it
    shutil.copytree(src, dst)
    return dst


def _garble_member(split_dir: Path, shard: str, member: str) -> None:
    """Overwrite one member's bytes (same size: offsets in the manifest stay valid), PNG signature kept."""
    path = split_dir / "shards" / f"{shard}.tar"
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    hit = False
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name == member:
                data, hit = data[:8] + bytes(len(data) - 8), True
            tar.addfile(m, io.BytesIO(data))
    assert hit, member


@pytest.fixture(scope="module")
def garbled(job_output, tmp_path_factory) -> tuple[Path, dict, str]:
    """A copy of the job output with one alpha PNG garbled: (split dir, its manifest row, member name)."""
    d = _copy(job_output[0], tmp_path_factory.mktemp("garbled"))
    row = mf.ok_rows(str(d))[2]
    member = f"{row['key']}.{schema.alpha_ext(1)}"
    _garble_member(d, row["shard"], member)
    return d, row, member


def _assert_names_all(exn: BaseException, row: dict, member: str) -> None:
    msg = str(exn)
    assert row["key"] in msg and f"{row['shard']}.tar" in msg and member in msg, msg


def test_streaming_error_names_key_shard_member(garbled):
    d, row, member = garbled
    with pytest.raises(SampleError) as e:
        list(StreamingClips(str(d), ALL, shuffle_shards=False))
    _assert_names_all(e.value, row, member)
    assert e.value.key == row["key"] and e.value.member == schema.alpha_ext(1)


def test_random_access_error_names_key_shard_member(garbled):
    d, row, member = garbled
    ds = RandomAccessClips(str(d), ALL)
    with pytest.raises(SampleError) as e:
        ds.by_key(row["key"])
    _assert_names_all(e.value, row, member)


def test_on_error_must_be_known(garbled):
    with pytest.raises(ValueError, match="on_error"):
        StreamingClips(str(garbled[0]), ALL, on_error="ignore")


def test_streaming_skip_through_dataloader_workers(garbled, caplog):
    d, row, _ = garbled
    ds = StreamingClips(str(d), ALL, on_error="skip", shuffle_buffer=2)
    good = {r["key"] for r in mf.ok_rows(str(d))} - {row["key"]}
    with caplog.at_level(logging.WARNING, logger="mava.loaders"):
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=sam2_collate)
            keys = [k for b in dl for k in b.keys]
            assert sorted(keys) == sorted(good)  # every good sample once, the bad one never
            assert ds.bad_samples == epoch + 1  # counted across worker processes, cumulative
    # the main process logs each finished epoch's count (workers log theirs in their own processes)
    assert "epoch 0: 1 bad sample(s) skipped in all workers" in caplog.text


def test_random_access_skip_through_dataloader_workers(garbled):
    d, row, _ = garbled
    ds = RandomAccessClips(str(d), ALL, on_error="skip")
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=sam2_collate)
    keys = [k for b in dl for k in b.keys]
    # the bad item is replaced by the next readable one: batches keep their size
    assert len(keys) == len(ds) and row["key"] not in keys
    i = ds.index[row["key"]]
    assert keys.count(ds.rows[(i + 1) % len(ds)]["key"]) == 2
    assert ds.bad_samples == 1


def test_streaming_truncated_tar_is_named_and_skippable(job_output, tmp_path):
    d = _copy(job_output[0], tmp_path)
    shard = mf.ok_rows(str(d))[0]["shard"]
    tar = d / "shards" / f"{shard}.tar"
    tar.write_bytes(tar.read_bytes()[:300_000])
    with pytest.raises(SampleError, match=f"{shard}.tar"):
        list(StreamingClips(str(d), ALL, shuffle_shards=False))
    ds = StreamingClips(str(d), ALL, shuffle_shards=False, on_error="skip")
    keys = [c["key"] for c in ds]
    other = {r["key"] for r in mf.ok_rows(str(d)) if r["shard"] != shard}
    assert other <= set(keys) and ds.bad_samples >= 1


# --- verify and stats on damaged files -------------------------------------------------------------


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _shard(d: Path, i: int) -> str:
    return schema.shard_name(d.name, i)


@pytest.mark.parametrize("damage", ["garbage", "empty"])
def test_verify_and_stats_report_unreadable_manifest_and_marker(job_output, tmp_path, capsys, damage):
    d = _copy(job_output[0], tmp_path)
    content = b"\x00not parquet, not json\xff" * 7 if damage == "garbage" else b""
    (d / schema.shard_manifest(d.name, 0)).write_bytes(content)
    (d / schema.shard_done(d.name, 1)).write_bytes(content)
    rc, out, err = _run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and "Traceback" not in out + err
    assert f"[manifest] {_shard(d, 0)}: " in out and "unreadable manifest" in out
    assert f"[marker] {_shard(d, 1)}: " in out and "unreadable JSON" in out
    rc, out, err = _run(capsys, "stats", d)
    assert rc == 1 and "UNREADABLE (2 files" in out
    assert schema.shard_manifest(d.name, 0) in out and schema.shard_done(d.name, 1) in out
    # the rest is summarised: every row of the finished shards with readable manifests (shard 1, its
    # marker unreadable, is not finished: named on the terminal, left out)
    assert f"{_shard(d, 1)}" in err and "not finished" in err
    rest = [r for i in (2, 3) for r in read_parquet_file(
        as_split(str(d)), schema.shard_manifest(d.name, i)).to_pylist()]
    ok = sum(r["status"] == "ok" for r in rest)
    assert f"samples: {len(rest)} planned, {ok} ok, {len(rest) - ok} failed" in out
    # other commands name the file in one line
    rc, out, err = _run(capsys, "query", d, "select count(*) from manifest")
    assert rc == 1 and err.startswith("error: ") and schema.shard_manifest(d.name, 0) in err


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_verify_reports_unreadable_tar(job_output, tmp_path, capsys, damage):
    d = _copy(job_output[0], tmp_path)
    tar = d / schema.shard_tar(d.name, 0)
    data = tar.read_bytes()
    tar.write_bytes({"garbage": b"\x17" * 5000, "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    rc, out, err = _run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and "Traceback" not in out + err
    assert f"[tar] {_shard(d, 0)}: " in out and "does not read to the end" in out
    assert f"[marker] {_shard(d, 0)}: done marker tar_sha256=" in out
    assert "[missing-sample]" in out
    # stats reads manifests, not tars, but a tar that is not the size its done marker records is named
    rc, out, _ = _run(capsys, "stats", d)
    assert rc == 1 and f"{schema.shard_tar(d.name, 0)}: " in out and "not the tar the marker vouches for" in out


def test_verify_reports_missing_planned_shards(job_output, tmp_path, capsys):
    d = _copy(job_output[0], tmp_path)
    run = json.loads((d / schema.RUN_JSON).read_text())
    assert run[schema.RUN_NUM_SHARDS] == 4
    # an interrupted run: shard 2 never finished (no marker, no files), shard 3 has a manifest but no marker
    for rel in (schema.shard_done(d.name, 2), schema.shard_manifest(d.name, 2), schema.shard_tar(d.name, 2),
                schema.shard_done(d.name, 3)):
        (d / rel).unlink()
    rc, out, _ = _run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and "of 4 planned" in out
    assert f"[missing-shard] {_shard(d, 2)}: planned shard" in out and "no done marker" in out
    assert f"[missing-shard] {_shard(d, 3)}: planned shard" in out and "manifest without done marker" in out
    # a larger plan recorded than shards on disk: also missing
    run[schema.RUN_NUM_SHARDS] = 6
    (d / schema.RUN_JSON).write_text(json.dumps(run))
    rc, out, _ = _run(capsys, "verify", d, "--no-progress")
    assert f"[missing-shard] {_shard(d, 5)}:" in out


def test_verify_reports_missing_or_unreadable_run_json(job_output, tmp_path, capsys):
    d = _copy(job_output[0], tmp_path)
    (d / schema.RUN_JSON).write_bytes(b"")
    rc, out, err = _run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and "[run-json]" in out and "unreadable JSON" in out and "Traceback" not in err
    rc, out, _ = _run(capsys, "stats", d)
    assert rc == 1 and schema.RUN_JSON in out
    (d / schema.RUN_JSON).unlink()
    rc, out, _ = _run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and "[run-json]" in out and "never finished" in out


def test_loaders_read_only_complete_shards(job_output, tmp_path, caplog):
    """A tar without its done marker (a run killed between the writer's renames) is never read."""
    d = _copy(job_output[0], tmp_path)
    unfinished = _shard(d, 0)
    (d / schema.shard_done(d.name, 0)).unlink()
    want = sorted(r["key"] for r in mf.ok_rows(str(d)) if r["shard"] != unfinished)
    assert len(want) < len(mf.ok_rows(str(d)))
    with caplog.at_level(logging.WARNING, logger="mava.manifest"):
        assert sorted(c["key"] for c in StreamingClips(str(d), ALL)) == want
    assert "without a done marker left out" in caplog.text and unfinished in caplog.text
    ra = RandomAccessClips(str(d), ALL)
    assert sorted(r["key"] for r in ra.rows) == want


def test_verify_notes_a_lease(job_output, tmp_path, capsys):
    d = _copy(job_output[0], tmp_path)
    (d / schema.LEASE_JSON).write_text(json.dumps({"host": "h1", "pid": 42, "heartbeat_at": "now"}))
    rc, out, _ = _run(capsys, "verify", d, "--no-progress")
    assert rc == 0 and "OK" in out and "note: lease.json is present (host h1, pid 42" in out
