"""Shard writer: real tars read back by webdataset, real parquet read by pyarrow and duckdb."""

from __future__ import annotations

import io
import json
import tarfile

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from mava import schema
from pipeline import plan as planning
from pipeline.segments import Segment, SegmentData
from pipeline.protocol import Failure, Stage
from pipeline.encode import encode_sample
from pipeline.writer import write_shard


def _sample(video: str, masklet: int, start: int, t: int = 3, h: int = 24, w: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed + masklet * 100 + start)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 128, 3)
    frames = np.stack([np.stack([(base[c] + 3 * xx + 2 * yy + 5 * i) % 256 for c in range(3)], -1)
                       for i in range(t)]).astype(np.uint8)  # smooth, so JPEG error stays small
    masks = rng.random((t, h, w)) > 0.5
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    for r in rles:
        r["counts"] = r["counts"].decode()
    seg = Segment(video, "manual", masklet, start, t)
    alpha = (rng.random((t, h, w)) * 255).astype(np.uint8)
    return SegmentData(seg, frames, masks, rles), alpha


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _write(tmp_path, order=(0, 1, 2), frames="jpg"):
    items = [_sample("vid_b", 1, 0), _sample("vid_a", 2, 12), _sample("vid_a", 0, 0)]
    encoded = [encode_sample(items[i][0], items[i][1], "mask", frames) for i in order]
    fail = Failure(schema.video_failure_key("vid_c"), "vid_c", "VideoMissing", "vid_c.mp4: no such file", Stage.PLAN)
    marker = write_shard(str(tmp_path / "sav_x"), "sav_x", 3, encoded, [fail])
    return items, marker


def test_shard_reads_back_with_webdataset_and_duckdb(tmp_path):
    items, marker = _write(tmp_path)
    tar = tmp_path / "sav_x" / schema.shard_tar("sav_x", 3)
    samples = list(wds.WebDataset(str(tar), shardshuffle=False).decode(wds.handle_extension("jpg", _rgb), "l8"))
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(d.segment.key for d, _ in items)
    by_key = {d.segment.key: (d, a) for d, a in items}
    for s in samples:
        data, alpha = by_key[s["__key__"]]
        for i in range(3):
            assert np.array_equal(s[schema.alpha_ext(i)], alpha[i])
            frame = s[schema.frame_ext(i)].astype(int)
            assert np.abs(frame - data.frames[i]).mean() < 6
        meta = s[schema.META_EXT]
        assert meta["ann_frames"] == data.segment.ann_frames
        dec = mask_utils.decode(meta["mask_rles"]).transpose(2, 0, 1).astype(bool)
        assert np.array_equal(dec, data.masks)
    rows = duckdb.sql(f"select key, status, error_type, tar_offset, tar_size from "
                      f"'{tmp_path}/sav_x/manifest/*.parquet' order by key").fetchall()
    assert [r[0] for r in rows] == sorted(keys + [schema.video_failure_key("vid_c")])
    assert {r[1] for r in rows} == {"ok", "failed"}
    assert marker["ok"] == 3 and marker["failed"] == 1


def test_offsets_address_each_sample(tmp_path):
    _write(tmp_path)
    root = tmp_path / "sav_x"
    table = pq.read_table(root / schema.shard_manifest("sav_x", 3)).to_pylist()
    blob = (root / schema.shard_tar("sav_x", 3)).read_bytes()
    for row in table:
        if row["status"] != "ok":
            assert row["tar_offset"] is None
            continue
        chunk = blob[row["tar_offset"]:row["tar_offset"] + row["tar_size"]]
        with tarfile.open(fileobj=io.BytesIO(chunk + b"\0" * 1024)) as tf:
            names = tf.getnames()
            assert len(names) == row["num_members"] == 1 + 2 * row["num_frames"]
            assert all(n.split(".", 1)[0] == row["key"] for n in names)
            png = tf.extractfile(f"{row['key']}.{schema.alpha_ext(0)}").read()
            assert Image.open(io.BytesIO(png)).size == (row["width"], row["height"])


def test_rewrite_is_byte_identical_and_order_independent(tmp_path):
    _write(tmp_path / "a", order=(0, 1, 2))
    _write(tmp_path / "b", order=(2, 0, 1))
    for rel in (schema.shard_tar("sav_x", 3), schema.shard_manifest("sav_x", 3), schema.shard_done("sav_x", 3)):
        assert (tmp_path / "a" / "sav_x" / rel).read_bytes() == (tmp_path / "b" / "sav_x" / rel).read_bytes()
    assert not list((tmp_path / "a").rglob(f"*{schema.TMP_SUFFIX}"))


def test_frames_none_stores_only_alpha(tmp_path):
    _write(tmp_path, frames="none")
    tar = tmp_path / "sav_x" / schema.shard_tar("sav_x", 3)
    with tarfile.open(tar) as tf:
        names = tf.getnames()
    assert not any(".frame." in n for n in names) and any(".alpha." in n for n in names)
    meta = json.loads(tarfile.open(tar).extractfile(names[0]).read())
    assert set(meta) == set(schema.META_FIELDS)


def test_duplicate_keys_refused(tmp_path):
    d, a = _sample("vid", 1, 0)
    enc = encode_sample(d, a, "mask")
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(str(tmp_path), "s", 0, [enc, enc], [])


def test_quality_columns(tmp_path):
    d, _ = _sample("vid", 1, 0)
    perfect = encode_sample(d, d.masks.astype(np.uint8) * 255, "mask").row
    assert perfect["mask_iou"] == 1.0 and perfect["semi_fraction"] == 0.0
    assert abs(perfect["mean_alpha"] - d.masks.mean()) < 1e-6
    inverted = encode_sample(d, (~d.masks).astype(np.uint8) * 255, "mask").row
    assert inverted["mask_iou"] == 0.0
    half = encode_sample(d, np.full(d.masks.shape, 128, np.uint8), "mask").row
    assert half["semi_fraction"] == 1.0


@pytest.mark.parametrize("spec,expected", [("3", {3}), ("3,7-9", {3, 7, 8, 9}), (" 1 , 2-2", {1, 2})])
def test_parse_shard_spec(spec, expected):
    assert planning.parse_shard_spec(spec) == expected


@pytest.mark.parametrize("bad", ["a", "3-1", "-2", "1-x"])
def test_parse_shard_spec_rejects(bad):
    with pytest.raises(ValueError):
        planning.parse_shard_spec(bad)


class _Ref:
    def __init__(self, video_id):
        self.video_id = video_id


def test_plan_and_select(tmp_path):
    refs = [_Ref(f"v{i}") for i in (4, 0, 3, 1, 2)]
    plans = planning.plan_shards(refs, 2)
    assert [[r.video_id for r in p.videos] for p in plans] == [["v0", "v1"], ["v2", "v3"], ["v4"]]
    out = str(tmp_path / "s")
    d, a = _sample("v0", 1, 0)
    write_shard(out, "s", 0, [encode_sample(d, a, "mask")], [], extra={schema.MARKER_VIDEOS: ["v0", "v1"]})
    write_shard(out, "s", 1, [], [Failure("v2_video", "v2", "VideoMissing", "gone", Stage.PLAN)],
                extra={schema.MARKER_VIDEOS: ["v2", "v3"]})
    sel = planning.select_shards(plans, out, "s")
    assert [p.index for p in sel.run] == [2] and [p.index for p in sel.skip] == [0, 1]
    sel = planning.select_shards(plans, out, "s", retry_failed=True)
    assert [p.index for p in sel.run] == [1, 2]
    sel = planning.select_shards(plans, out, "s", shards={0})
    assert [p.index for p in sel.run] == [0]
    with pytest.raises(ValueError, match="outside the plan"):
        planning.select_shards(plans, out, "s", shards={7})
    (tmp_path / "s" / "shards" / f"junk.tar.1234{schema.TMP_SUFFIX}").write_bytes(b"x")
    assert planning.clean_partials(out) == 1
