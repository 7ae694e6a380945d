"""The real SA-V annotation file: parsing, type drift, segment keys, mask areas; RLE validation; fsspec."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import fsspec
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mava import schema
from pipeline import sav
from pipeline.errors import AnnotationMalformed, RleSizeMismatch, UnsafeId
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments


@pytest.fixture(scope="module")
def real_json(fixtures_dir) -> Path:
    return fixtures_dir / "sav" / "sav_000001_manual.json"


@pytest.fixture(scope="module")
def real_split(real_json, tmp_path_factory) -> Path:
    """The real JSON beside a stand-in 848x480 (WxH 480x848) 24 fps video of 483 frames (flat grey)."""
    import av

    split = tmp_path_factory.mktemp("real") / "sav_train"
    (split / "sav_000").mkdir(parents=True)
    shutil.copy(real_json, split / "sav_000" / real_json.name)
    with av.open(str(split / "sav_000" / "sav_000001.mp4"), "w") as c:
        st = c.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = 480, 848, "yuv420p"
        st.options = {"preset": "ultrafast"}
        img = np.full((848, 480, 3), 100, np.uint8)
        for t in range(483):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 24)
            for p in st.encode(f):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return split


def expected_keys(vid: str, visible: np.ndarray, seg_len: int) -> list[tuple[str, int, int]]:
    """(key, length, overlap) predicted by the DESIGN rule, computed independently of the reader."""
    idx = np.flatnonzero(visible)
    if idx.size == 0:
        return []
    first, last = int(idx[0]), int(idx[-1])
    span = last - first + 1
    if span <= seg_len:
        starts = [first]
    else:
        starts = list(range(first, last - seg_len + 2, seg_len))
        if starts[-1] + seg_len - 1 < last:
            starts.append(last - seg_len + 1)
    out = []
    for k, s in enumerate(starts):
        length = min(seg_len, span)
        overlap = 0 if k == 0 else max(0, starts[k - 1] + seg_len - s)
        out.append((s, length, overlap))
    return out


def test_real_annotation_parses(real_json):
    ann = sav.load_annotation(str(real_json), "manual", "sav_000001")
    assert (ann.height, ann.width) == (848, 480)
    assert ann.num_frames == 121
    assert ann.masklet_ids == [0, 1, 2, 3, 4]
    assert ann.fps == pytest.approx(24.0)
    assert ann.first_appeared == [0, 0, 0, 113, 0]   # annotated (6 fps) frame counts


def test_real_masks_shape_and_areas(real_json):
    raw = json.loads(real_json.read_text())
    ann = sav.load_annotation(str(real_json), "manual", "sav_000001")
    for j, mid in enumerate(ann.masklet_ids):
        areas = []
        for i in range(ann.num_frames):
            m = sav.decode_rle(ann.rles[i][j])
            assert m.shape == (848, 480) and m.dtype == bool
            areas.append(int(m.sum()))
        areas = np.array(areas)
        # masklet_size_abs is the mean area over the frames where the masklet is visible
        assert areas[areas > 0].mean() == pytest.approx(raw["masklet_size_abs"][j], rel=0.01)


def test_real_segment_keys_follow_the_rule(real_split, real_json):
    raw = json.loads(real_json.read_text())
    cfg = ReaderConfig(masklets="manual", segment_len=12)
    ref, = list_videos(str(real_split))
    plan = plan_video(ref, cfg)
    assert (plan.height, plan.width, plan.num_frames, plan.fps_ratio) == (848, 480, 483, 4)
    expected = []
    for j, mid in enumerate(raw["masklet_id"]):
        vis = np.array([mask_utils.area(fr[j]) > 0 for fr in raw["masklet"]])
        for s, n, o in expected_keys("sav_000001", vis, 12):
            expected.append((schema.sample_key("sav_000001", "manual", int(mid), s), n, o))
    expected.sort()
    got = sorted((s.key, s.length, s.overlap) for s in plan.segments)  # plan order is frame order
    assert got == expected
    assert "sav_000001_m003_0113" in [k for k, _, _ in got]          # the late masklet: 8 frames
    assert plan.failures == []
    seg = plan.segments[0]
    assert seg.video_frames == [4 * a for a in seg.ann_frames]


def test_real_read_masks_match_rles(real_split):
    cfg = ReaderConfig(masklets="manual", segment_len=12, backend="pyav")
    ref, = list_videos(str(real_split))
    plan = plan_video(ref, cfg)
    plan.segments = plan.segments[:2]
    for item in read_segments(plan, cfg):
        assert item.frames.shape == (12, 848, 480, 3) and item.masks.shape == (12, 848, 480)
        for m, r in zip(item.masks, item.rles):
            assert np.array_equal(m, mask_utils.decode(r).astype(bool))


def test_type_drift_is_tolerated(real_json, tmp_path):
    d = json.loads(real_json.read_text())
    d["video_height"], d["video_width"] = 848, 480.0
    d["masklet_first_appeared_frame"] = [0, 0, 0, 113, 0]
    d["masklet_stability_score"] = [[0.9, 0.95]] * 5
    d["video_environment"] = ["Indoor"]
    d["masklet_id"] = [float(i) for i in d["masklet_id"]]
    p = tmp_path / "sav_000001_manual.json"
    p.write_text(json.dumps(d))
    ann = sav.load_annotation(str(p), "manual", "sav_000001")
    assert ann.masklet_ids == [0, 1, 2, 3, 4] and (ann.height, ann.width) == (848, 480)


@pytest.mark.parametrize("field,value,problem", [
    ("video_height", 848.5, "whole number"),
    ("video_height", "848", "not a number"),
    ("masklet", {"a": 1}, "per-frame lists"),
    ("masklet_id", [0, 0, 1, 2, 3], "duplicate"),
    ("masklet_num", 4, "masklet_num"),
])
def test_structural_problems_are_malformed(real_json, tmp_path, field, value, problem):
    d = json.loads(real_json.read_text())
    d[field] = value
    p = tmp_path / "sav_000001_manual.json"
    p.write_text(json.dumps(d))
    with pytest.raises(AnnotationMalformed) as e:
        sav.load_annotation(str(p), "manual", "sav_000001")
    assert e.value.path == str(p) and problem in e.value.problem


def test_json_video_id_must_match_file(real_json, tmp_path):
    d = json.loads(real_json.read_text())
    d["video_id"] = "../sav_000002"
    p = tmp_path / "sav_000001_manual.json"
    p.write_text(json.dumps(d))
    with pytest.raises(UnsafeId, match="disagrees"):
        sav.load_annotation(str(p), "manual", "sav_000001")


def test_rle_counts_match_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 60, 2)
        m = rng.random((h, w)) < rng.random() ** 3
        rle = sav.encode_mask(m)
        assert sav.check_rle(rle, h, w, "f", "x") == int(m.sum()) == int(mask_utils.area(rle))
        assert np.array_equal(sav.decode_rle(rle), m)


@pytest.mark.parametrize("counts,problem", [
    ("", "covers 0 pixels"), ("\x7f\x7f", "alphabet"), ("Qa", "truncated"), ("5", "covers 5"),
])
def test_bad_rle_counts_are_rejected(counts, problem):
    with pytest.raises(AnnotationMalformed, match=problem):
        sav.check_rle({"size": [4, 4], "counts": counts}, 4, 4, "f.json", "masklet 0")


def test_rle_size_mismatch():
    rle = sav.encode_mask(np.ones((4, 5), bool))
    with pytest.raises(RleSizeMismatch, match="4x5 differs from the video size 5x4"):
        sav.check_rle(rle, 5, 4, "f.json", "masklet 0")


def test_fsspec_memory_split(synth_split):
    """Listing, JSON parsing, planning and reading through an fsspec URL (memory://)."""
    fs = fsspec.filesystem("memory")
    base = "/mem_split/sav_train"
    for p in sorted(synth_split.rglob("*")):
        rel = p.relative_to(synth_split).as_posix()
        if p.is_file() and not rel.startswith("gt_alpha"):
            fs.pipe(f"{base}/{rel}", p.read_bytes())
    try:
        refs = list_videos(f"memory://{base}")
        local = list_videos(str(synth_split))
        assert [r.video_id for r in refs] == [r.video_id for r in local]
        assert refs[0].manual_url.startswith("memory://")
        ann = sav.load_annotation(refs[0].manual_url, "manual", refs[0].video_id)
        assert ann.num_frames == 15
        for backend in ("decord", "pyav"):
            cfg = ReaderConfig(backend=backend)
            plan = plan_video(refs[0], cfg)
            ref_plan = plan_video(local[0], cfg)
            assert [s.key for s in plan.segments] == [s.key for s in ref_plan.segments]
            a = next(read_segments(plan, cfg))
            b = next(read_segments(ref_plan, cfg))
            assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    finally:
        fs.rm("/mem_split", recursive=True)
