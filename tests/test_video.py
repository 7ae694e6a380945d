"""Decoders: exact frames of real H.264 footage for both backends; JPEG-folder decoder."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from pipeline import video
from pipeline.errors import VideoCorrupt, VideoMissing

BACKENDS = ["decord", "pyav"]


@pytest.fixture(scope="module")
def bedroom(fixtures_dir):
    return str(fixtures_dir / "video" / "bedroom.mp4")


@pytest.fixture(scope="module")
def bedroom_frames(bedroom) -> np.ndarray:
    """Full sequential PyAV decode (no seeking): the reference."""
    with av.open(bedroom) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata(bedroom, bedroom_frames, backend):
    dec = video.open_video(bedroom, backend)
    try:
        assert dec.num_frames == len(bedroom_frames)
        assert (dec.height, dec.width) == bedroom_frames.shape[1:3]
        assert dec.fps == pytest.approx(30.0)
    finally:
        dec.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_requested_frames_are_exact(bedroom, bedroom_frames, backend):
    n = len(bedroom_frames)
    requests = [[0, 4, 8, 12], [100, 96, 199], [50, 50, 3], [n - 1], list(range(120, 168, 4)), [1, 2]]
    dec = video.open_video(bedroom, backend)
    try:
        for idx in requests:  # forward, backward and repeated requests on one decoder
            got = dec.get(idx)
            assert got.shape == (len(idx),) + bedroom_frames.shape[1:] and got.dtype == np.uint8
            for k, i in enumerate(idx):
                assert np.array_equal(got[k], bedroom_frames[i]), f"{backend}: frame {i} differs"
    finally:
        dec.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_and_missing(bedroom, backend, tmp_path):
    dec = video.open_video(bedroom, backend)
    try:
        with pytest.raises(VideoCorrupt, match="frame 200 requested"):
            dec.get([0, 200])
    finally:
        dec.close()
    with pytest.raises(VideoMissing) as e:
        video.open_video(str(tmp_path / "nope.mp4"), backend)
    assert "nope.mp4" in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_synth_gop_seeking_matches_sequential(synth_split, backend):
    """Synthetic videos have a keyframe every 48 frames and B-frames: seeks must land exactly."""
    mp4 = sorted(synth_split.rglob("*.mp4"))[0]
    with av.open(str(mp4)) as c:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    dec = video.open_video(str(mp4), backend)
    try:
        for idx in ([56, 52, 48, 47], [0, 59], [30, 31, 49]):
            got = dec.get(idx)
            for k, i in enumerate(idx):
                assert np.array_equal(got[k], ref[i])
    finally:
        dec.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_folder(tmp_path, backend):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (5, 24, 32, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i:05d}.jpg", quality=95)
    dec = video.open_video(str(tmp_path), backend)
    assert (dec.num_frames, dec.height, dec.width, dec.fps) == (5, 24, 32, 24.0)
    got = dec.get([4, 1])
    for k, i in enumerate([4, 1]):
        assert np.array_equal(got[k], np.asarray(Image.open(tmp_path / f"{i:05d}.jpg").convert("RGB")))
    dec.close()


def test_unknown_backend(bedroom):
    with pytest.raises(ValueError, match="unknown video backend"):
        video.open_video(bedroom, "opencv")


# --- rotation -------------------------------------------------------------------------------------

ROTATIONS = [90, 180, 270]


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> dict:
    """A 96x160 (WxH, portrait) display video written with display rotation 0, 90, 180 and 270:
    rotation r stores the pictures turned counter-clockwise by r and a display matrix turning them back."""
    from pipeline import synth

    root = tmp_path_factory.mktemp("rotated")
    out = {}
    for r in [0] + ROTATIONS:
        spec = synth.VideoSpec(f"rot_{r:03d}", 96, 160, 30, seed=5, rotate=r)
        out[r] = (str(synth.write_video(spec, root / str(r), None)), spec)
    return out


def _av_display_frames(path: str) -> np.ndarray:
    """Reference: sequential PyAV decode, each picture turned by its own frame.rotation (PyAV's
    counter-clockwise angle of the display matrix; np.rot90 turns counter-clockwise too)."""
    with av.open(path) as c:
        return np.stack([np.rot90(f.to_ndarray(format="rgb24"), k=f.rotation // 90) for f in c.decode(video=0)])


@pytest.mark.parametrize("r", ROTATIONS)
def test_rotated_mp4_same_display_frames_both_backends(rotated, r):
    path, spec = rotated[r]
    ref = _av_display_frames(path)
    assert ref.shape[1:3] == (160, 96)                       # display orientation: portrait
    got = {}
    for backend in BACKENDS:
        dec = video.open_video(path, backend)
        try:
            assert (dec.display_rotation, dec.rotation) == (r, r)
            assert (dec.height, dec.width, dec.num_frames) == (160, 96, 30)
            idx = [29, 0, 4, 24, 25, 8, 8]                   # backward, forward, repeated
            got[backend] = dec.get(idx)
            assert np.array_equal(got[backend], ref[idx]), backend
        finally:
            dec.close()
    assert np.array_equal(got["decord"], got["pyav"])
    # the same as the unrotated source video, within codec tolerance
    src = video.open_video(rotated[0][0], "pyav")
    try:
        assert src.display_rotation == 0
        unrot = src.get([29, 0, 4, 24, 25, 8, 8])
    finally:
        src.close()
    diff = np.abs(got["pyav"].astype(np.int16) - unrot.astype(np.int16))
    assert diff.mean() < 4, diff.mean()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("r", ROTATIONS)
def test_rotated_mp4_coded_pictures_on_request(rotated, backend, r):
    """rotation=0 gives the coded pictures: the display frames turned back by numpy."""
    path, _ = rotated[r]
    with av.open(path) as c:
        coded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    dec = video.open_video(path, backend, rotation=0)
    try:
        assert (dec.display_rotation, dec.rotation) == (r, 0)
        assert (dec.height, dec.width) == coded.shape[1:3]
        got = dec.get([3, 28, 12])
        assert np.array_equal(got, coded[[3, 28, 12]])
        display = video.open_video(path, backend)
        try:
            assert np.array_equal(display.get([3, 28, 12]), video.rotate(got, r))
        finally:
            display.close()
    finally:
        dec.close()


def test_rotate_helpers():
    a = np.arange(2 * 3 * 1).reshape(1, 2, 3, 1)
    assert np.array_equal(video.rotate(a, 90)[0, :, :, 0], [[3, 0], [4, 1], [5, 2]])   # clockwise
    assert np.array_equal(video.rotate(video.rotate(a, 90), 270), a)
    assert video.rotated_size(160, 96, 270) == (96, 160) and video.rotated_size(160, 96, 180) == (160, 96)
    with pytest.raises(ValueError, match="rotation must be one of"):
        video.open_video("x.mp4", "pyav", rotation=45)
