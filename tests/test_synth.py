"""The synthetic SA-V generator: schema parity with the real file, determinism, GT consistency."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline import sav, synth


def _files(split):
    return {p.relative_to(split).as_posix(): p for p in sorted(split.rglob("*")) if p.is_file()}


def test_schema_matches_real_file(synth_split, fixtures_dir):
    real = json.loads((fixtures_dir / "sav" / "sav_000001_manual.json").read_text())
    for p in sorted(synth_split.rglob("*_manual.json")) + sorted(synth_split.rglob("*_auto.json")):
        d = json.loads(p.read_text())
        assert set(d) == set(real), p.name
        for k in ("video_height", "video_width", "video_frame_count", "video_duration", "video_resolution"):
            assert type(d[k]) is type(real[k]), k
        assert isinstance(d["video_environment"], str)
        assert set(d["masklet"][0][0]) == {"size", "counts"}
        if p.name.endswith("_manual.json"):
            assert all(isinstance(v, float) for v in d["masklet_first_appeared_frame"])
            assert d["masklet_stability_score"] == [None] * d["masklet_num"]
        else:
            assert all(type(v) is int for v in d["masklet_first_appeared_frame"])
            assert all(isinstance(s, list) and isinstance(s[0], float) for s in d["masklet_stability_score"])


def test_sizes_layout_and_gt(synth_split):
    shapes = set()
    for vid, spec in synth.load_specs(synth_split).items():
        shapes.add((spec.width > spec.height))
        d = json.loads(next(synth_split.rglob(f"{vid}_manual.json")).read_text())
        n_ann = len(d["masklet"])
        assert n_ann == (spec.num_frames - 1) // 4 + 1
        for j in d["masklet_id"]:
            areas = []
            for i in range(n_ann):
                png = np.asarray(Image.open(synth_split / "gt_alpha" / vid / f"{j:03d}" / f"{i:05d}.png"))
                assert png.shape == (spec.height, spec.width)
                m = sav.decode_rle(d["masklet"][i][j])
                assert np.array_equal(m, png >= 128)
                areas.append(m.sum())
            areas = np.array(areas)
            assert d["masklet_size_abs"][j] == pytest.approx(areas[areas > 0].mean())
            assert d["masklet_first_appeared_frame"][j] == np.argmax(areas > 0)
        # object 1 disappears for a while, object 2 appears late, alpha is soft
        assert d["masklet_visibility_changes"][1] >= 2
        assert d["masklet_first_appeared_frame"][2] > 0
        png = np.asarray(Image.open(synth_split / "gt_alpha" / vid / "001" / "00000.png"))
        assert ((png > 10) & (png < 245)).mean() > 0.01
    assert shapes == {True, False}   # landscape and portrait


def _cli(out, seed):
    subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(out), "--videos", "2", "--frames", "20",
                    "--sizes", "64x48", "--seed", str(seed)], capture_output=True, check=True)
    return _files(out / "sav_train")


def _decode(p):
    import av

    with av.open(str(p)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def test_deterministic(tmp_path):
    """Same seed: identical JSON and ground-truth PNG bytes; mp4s decode to the same content within
    codec tolerance (libx264 via PyAV is not byte-reproducible run to run here)."""
    a, b = _cli(tmp_path / "a", 5), _cli(tmp_path / "b", 5)
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith(".mp4"):
            fa, fb = _decode(a[k]), _decode(b[k])
            assert fa.shape == fb.shape and np.abs(fa - fb).mean() < 3, k
        else:
            assert a[k].read_bytes() == b[k].read_bytes(), k
    other = _cli(tmp_path / "c", 6)
    assert other["sav_000/sav_000001_manual.json"].read_bytes() != a["sav_000/sav_000001_manual.json"].read_bytes()


def test_cli_long_and_flat(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(tmp_path), "--videos", "1",
                        "--frames", "12", "--sizes", "64x48", "--flat", "--long", "30", "--long-size", "256x144",
                        "--background", ""], capture_output=True, text=True, check=True)
    assert "wrote 2 videos" in r.stdout
    split = tmp_path / "sav_train"
    assert (split / "sav_000001.mp4").exists() and (split / "sav_000002.mp4").exists()
    from pipeline.reader import ReaderConfig, list_videos, plan_video

    refs = list_videos(str(split))
    assert [r.video_id for r in refs] == ["sav_000001", "sav_000002"]
    plan = plan_video(refs[1], ReaderConfig())
    assert (plan.width, plan.height, plan.num_frames) == (256, 144, 30)
    h = subprocess.run([sys.executable, "-m", "pipeline.synth", "--help"], capture_output=True, text=True)
    assert "--long" in h.stdout and "gt_alpha" in h.stdout


def test_cli_rotate(tmp_path):
    """--rotate writes the coded pictures turned counter-clockwise and a display matrix turning them
    back; the JSON, ground truth and displayed frames are those of the unrotated video."""
    import av

    def run(out, rotate):
        subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(out), "--videos", "1", "--frames", "9",
                        "--sizes", "96x64", "--background", "", "--rotate", str(rotate)], capture_output=True, check=True)
        return _files(out / "sav_train")

    plain, rot = run(tmp_path / "a", 0), run(tmp_path / "b", 90)
    for k in plain:
        if k.endswith(".json") and k != synth.META_FILE or k.endswith(".png"):
            assert plain[k].read_bytes() == rot[k].read_bytes(), k
    assert '"rotate": 90' in rot[synth.META_FILE].read_text() and "rotate" not in plain[synth.META_FILE].read_text()
    mp4 = rot["sav_000/sav_000001.mp4"]
    with av.open(str(mp4)) as c:
        frames = list(c.decode(video=0))
    assert (frames[0].width, frames[0].height) == (64, 96)          # coded: portrait
    assert frames[0].rotation == -90                               # PyAV: counter-clockwise angle
    shown = np.stack([np.rot90(f.to_ndarray(format="rgb24"), k=-1) for f in frames]).astype(np.int16)
    assert np.abs(shown - _decode(plain["sav_000/sav_000001.mp4"])).mean() < 3
