"""Bad input: each problem gives one typed error naming the file and the problem, and the other
videos of the same split still read fine. Both decoder backends run every case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from mava import schema
from pipeline import sav
from pipeline.errors import (
    AnnotationMalformed, AnnotationMissing, AnnotationOutOfRange, EmptyMasklet, RleSizeMismatch,
    UnsafeId, VideoCorrupt, VideoMissing,
)
from pipeline.protocol import Failure, Stage
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments

BAD = "sav_000002"


@pytest.fixture(params=["decord", "pyav"])
def cfg(request) -> ReaderConfig:
    return ReaderConfig(masklets="manual", backend=request.param)


@pytest.fixture
def split(synth_split, tmp_path) -> Path:
    dst = tmp_path / "sav_train"
    shutil.copytree(synth_split, dst, ignore=shutil.ignore_patterns("gt_alpha"))
    return dst


def _file(split: Path, name: str) -> Path:
    return split / "sav_000" / name


def _edit_json(split: Path, vid: str, fn) -> Path:
    p = _file(split, f"{vid}_manual.json")
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))
    return p


def _others_read_fine(split: Path, cfg: ReaderConfig, bad: str = BAD) -> None:
    others = [r for r in list_videos(str(split)) if r.video_id != bad]
    assert len(others) >= 2
    for ref in others:
        plan = plan_video(ref, cfg)
        assert plan.segments and not plan.failures
        items = list(read_segments(plan, cfg))
        assert len(items) == len(plan.segments) and not any(isinstance(i, Failure) for i in items)


def _ref(split: Path, vid: str = BAD):
    return next(r for r in list_videos(str(split)) if r.video_id == vid)


def test_truncated_mp4(split, cfg):
    mp4 = _file(split, f"{BAD}.mp4")
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) // 2])     # the moov index is at the end: unopenable
    with pytest.raises(VideoCorrupt) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(mp4) and "cannot open" in e.value.problem
    _others_read_fine(split, cfg)


def _faststart_copy(src: Path, dst: Path) -> None:
    with av.open(str(src)) as ci, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as co:
        si = ci.streams.video[0]
        so = co.add_stream_from_template(si)
        for pkt in ci.demux(si):
            if pkt.dts is None:
                continue
            pkt.stream = so
            co.mux(pkt)


def test_truncated_faststart_mp4(split, cfg):
    """Index first, data cut: the header declares more frames than can be read."""
    mp4 = _file(split, f"{BAD}.mp4")
    tmp = mp4.with_suffix(".tmp4")
    _faststart_copy(mp4, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    mp4.write_bytes(data[: int(len(data) * 0.45)])
    with pytest.raises(VideoCorrupt) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(mp4)
    # PyAV sees the short packet index; decord fails while indexing: both say what is wrong
    assert ("truncated: the header declares 60 frames" in e.value.problem
            or "cannot open video" in e.value.problem and "av_read_frame failed" in e.value.problem)
    _others_read_fine(split, cfg)


def test_missing_mp4(split, cfg):
    mp4 = _file(split, f"{BAD}.mp4")
    mp4.unlink()
    ref = _ref(split)                         # still listed through its JSON
    with pytest.raises(VideoMissing) as e:
        plan_video(ref, cfg)
    assert e.value.path == str(mp4) and "does not exist" in e.value.problem
    _others_read_fine(split, cfg)


def test_missing_json(split, cfg):
    p = _file(split, f"{BAD}_manual.json")
    p.unlink()
    with pytest.raises(AnnotationMissing) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(p)
    _others_read_fine(split, cfg)


def test_malformed_json(split, cfg):
    p = _file(split, f"{BAD}_manual.json")
    p.write_text('{"video_id": "sav_000002", "masklet": [[{"size": [96, 160], "counts": "')
    with pytest.raises(AnnotationMalformed) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(p) and "invalid JSON" in e.value.problem
    _others_read_fine(split, cfg)


def _annotation_80x120(d):
    """Edit an SA-V JSON so that it declares (and its RLEs have) an 80x120 size."""
    d["video_height"], d["video_width"] = 80.0, 120.0
    for fr in d["masklet"]:
        for r in fr:
            r["size"] = [80, 120]


def test_rle_size_mismatch_whole_file(split, cfg):
    p = _edit_json(split, BAD, _annotation_80x120)
    with pytest.raises(RleSizeMismatch) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(p) and "80x120 differs from the video size" in e.value.problem
    _others_read_fine(split, cfg)


def test_rle_size_mismatch_one_masklet(split, cfg):
    def bad_one(d):
        d["masklet"][3][1] = sav.encode_mask(np.ones((10, 10), bool))
    p = _edit_json(split, BAD, bad_one)
    plan = plan_video(_ref(split), cfg)
    assert [f.key for f in plan.failures] == [schema.sample_key(BAD, "manual", 1, 0)]
    f = plan.failures[0]
    assert f.error_type == RleSizeMismatch.__name__ and f.stage is Stage.PLAN
    assert f.message.startswith(str(p)) and "masklet 1 annotated frame 3" in f.message
    assert {s.masklet_id for s in plan.segments} == {0, 2}
    assert all(not isinstance(i, Failure) for i in read_segments(plan, cfg))
    _others_read_fine(split, cfg)


def test_annotation_longer_than_video(split, cfg):
    def extend(d):
        d["masklet"] = d["masklet"] + d["masklet"][-1:] * 3   # 18 annotated frames need frame 68 of 60
    p = _edit_json(split, BAD, extend)
    with pytest.raises(AnnotationOutOfRange) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(p) and "need video frame 68, the video has 60 frames" in e.value.problem
    _others_read_fine(split, cfg)


def test_empty_masklet(split, cfg):
    def empty(d):
        h, w = int(d["video_height"]), int(d["video_width"])
        for fr in d["masklet"]:
            fr[2] = sav.encode_mask(np.zeros((h, w), bool))
    p = _edit_json(split, BAD, empty)
    plan = plan_video(_ref(split), cfg)
    assert [f.key for f in plan.failures] == [f"{BAD}_m002_0000"]
    f = plan.failures[0]
    assert f.error_type == EmptyMasklet.__name__ and f.message.startswith(str(p)) and "masklet 2 is empty" in f.message
    assert {s.masklet_id for s in plan.segments} == {0, 1}
    _others_read_fine(split, cfg)


def test_id_with_dots_in_file_name(split, cfg):
    evil = "sav_0..2"
    for src, dst in ((f"{BAD}.mp4", f"{evil}.mp4"), (f"{BAD}_manual.json", f"{evil}_manual.json")):
        _file(split, src).rename(_file(split, dst))
    _file(split, f"{BAD}_auto.json").unlink()
    ref = _ref(split, evil)
    with pytest.raises(UnsafeId) as e:
        plan_video(ref, cfg)
    assert e.value.path == str(_file(split, f"{evil}.mp4")) and "unsafe video id" in e.value.problem
    _others_read_fine(split, cfg, bad=evil)


def test_json_video_id_with_slash(split, cfg):
    p = _edit_json(split, BAD, lambda d: d.update(video_id="../../etc/sav_000002"))
    with pytest.raises(UnsafeId) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(p) and "disagrees with the file name" in e.value.problem
    _others_read_fine(split, cfg)


def test_val_list_with_unsafe_ids(tmp_path, cfg):
    """Ids from the val list never become paths: the refs carry no URLs and planning fails."""
    split = tmp_path / "sav_val"
    (split / "JPEGImages_24fps").mkdir(parents=True)
    (split / "Annotations_6fps").mkdir()
    (split / "sav_val.txt").write_text("../../etc\nsav_000001/../../x\nsav_000009\n")
    refs = {r.video_id: r for r in list_videos(str(split))}
    assert set(refs) == {"../../etc", "sav_000001/../../x", "sav_000009"}
    for vid in ("../../etc", "sav_000001/../../x"):
        r = refs[vid]
        assert r.video_url is None and r.mask_url is None
        with pytest.raises(UnsafeId) as e:
            plan_video(r, cfg)
        assert e.value.path == str(split / "sav_val.txt") and vid in e.value.problem
    with pytest.raises((VideoMissing, AnnotationMissing)):
        plan_video(refs["sav_000009"], cfg)


def test_errors_pickle_and_name_file(split, cfg):
    import pickle

    mp4 = _file(split, f"{BAD}.mp4")
    mp4.unlink()
    with pytest.raises(VideoMissing) as e:
        plan_video(_ref(split), cfg)
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is VideoMissing and str(again) == str(e.value) and str(mp4) in str(again)


def _remux_rotated(mp4: Path, degrees_cw: float, hflip: bool = False) -> None:
    """Rewrite ``mp4`` in place (no re-encoding) with a display matrix turning it clockwise."""
    tmp = mp4.with_suffix(".rot.mp4")
    with av.open(str(mp4)) as ci, av.open(str(tmp), "w", format="mp4") as co:
        si = ci.streams.video[0]
        so = co.add_stream_from_template(si)
        so.set_display_rotation(-degrees_cw, hflip=hflip)
        for pkt in ci.demux(si):
            if pkt.dts is None:
                continue
            pkt.stream = so
            co.mux(pkt)
    tmp.replace(mp4)


def test_rotated_video_annotation_fits_neither_orientation(split, cfg):
    """A 96x160 (WxH) video with a 90-degree display matrix and an 80x120 annotation: the error names
    the rotation and both sizes it tried."""
    _remux_rotated(_file(split, f"{BAD}.mp4"), 90)

    p = _edit_json(split, BAD, _annotation_80x120)
    with pytest.raises(RleSizeMismatch) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(p)
    assert "annotation size 80x120 differs from the video size 96x160" in e.value.problem
    assert ("display rotation is 90 degrees and the annotation matches neither the displayed 96x160 "
            "nor the coded 160x96 pictures") in e.value.problem
    _others_read_fine(split, cfg)


@pytest.mark.parametrize("degrees,hflip,problem", [(90, True, "mirrors the picture"),
                                                   (45, False, "45 degrees is not a multiple of 90")])
def test_unsupported_display_matrix(split, cfg, degrees, hflip, problem):
    mp4 = _file(split, f"{BAD}.mp4")
    _remux_rotated(mp4, degrees, hflip)
    with pytest.raises(VideoCorrupt) as e:
        plan_video(_ref(split), cfg)
    assert e.value.path == str(mp4) and problem in e.value.problem
    _others_read_fine(split, cfg)
