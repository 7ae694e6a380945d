"""VideoMaMa matter on tiny random checkpoints saved in the release layout (real diffusers classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import MatterConfig, build_matter
from models.tiny import make_tiny
from models.checkpoint import CheckpointError, CheckpointMissing
from models.videomama import VideoMaMaMatter, model_size

T, H, W = 3, 64, 96


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


def cfg_for(ckpt: Path, base: Path, **kw) -> MatterConfig:
    opts = dict(checkpoint=str(ckpt), base_model=str(base), device="cpu", long_side=128, segment_len=4)
    opts.update(kw)
    return MatterConfig(**opts)


def clip(seed: int, t: int = T, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((t, h, w), bool)
    y, x = rng.integers(5, h // 3), rng.integers(5, w // 3)
    masks[:, y:y + h // 2, x:x + w // 2] = True
    return frames, masks


@pytest.fixture(scope="module")
def matter(tiny) -> VideoMaMaMatter:
    return build_matter("videomama", cfg_for(*tiny))


def test_loads_through_from_pretrained_and_outputs_contract(matter, tiny):
    assert isinstance(matter, VideoMaMaMatter) and matter.deterministic
    assert matter.unet_in_channels == 12 and matter.dtype == torch.float32
    for h, w in [(H, W), (50, 70)]:
        frames, masks = clip(1, h=h, w=w)
        alpha = matter.refine(frames, masks)
        assert alpha.shape == (T, h, w) and alpha.dtype == np.float32
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0 and alpha.std() > 0
    d = matter.describe()
    assert d["name"] == "videomama" and d["checkpoint"] == str(tiny[0]) and len(d["weights_sha256"]) == 64
    assert d["dtype"] == "float32" and d["device"] == "cpu"


def test_rerun_with_same_seed_is_identical_and_seed_matters(tiny):
    frames, masks = clip(2)
    a = build_matter("videomama", cfg_for(*tiny)).refine(frames, masks)
    b = build_matter("videomama", cfg_for(*tiny)).refine(frames, masks)
    c = build_matter("videomama", cfg_for(*tiny, seed=1)).refine(frames, masks)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_batch_of_two_equals_two_single_runs(tiny, matter):
    c1, c2 = clip(3), clip(4)
    batched = build_matter("videomama", cfg_for(*tiny, batch_size=2))
    pair = batched.refine_batch([c1, c2])
    swapped = batched.refine_batch([c2, c1])
    s1, s2 = matter.refine(*c1), matter.refine(*c2)
    # batched convolutions may round differently in the last bits: far below one 8-bit alpha step
    np.testing.assert_allclose(pair[0], s1, atol=1e-5)
    np.testing.assert_allclose(pair[1], s2, atol=1e-5)
    np.testing.assert_allclose(swapped[0], s2, atol=1e-5)
    assert np.abs(s1 - s2).max() > 1e-3


def _masked_conv_in_checkpoint(tiny, out: Path, keep: slice) -> Path:
    """Copy of the tiny checkpoint whose conv_in only sees input channels ``keep``."""
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(tiny[0] / "unet")
    with torch.no_grad():
        w = unet.conv_in.weight
        kept = w[:, keep].clone()
        w.zero_()
        w[:, keep] = kept * 20  # make the remaining path strong enough to show
    unet.save_pretrained(out / "unet")
    return out


@pytest.mark.parametrize("channels,reacts_to", [(slice(8, 12), "mask"), (slice(4, 8), "frames")])
def test_channel_order(tiny, tmp_path, channels, reacts_to):
    ckpt = _masked_conv_in_checkpoint(tiny, tmp_path, channels)
    m = build_matter("videomama", cfg_for(ckpt, tiny[1], posterior="mode"))
    frames, masks = clip(5)
    other_frames = clip(6)[0]
    other_masks = np.roll(masks, 20, axis=2)
    base = m.refine(frames, masks)
    d_frames = np.abs(m.refine(other_frames, masks) - base).max()
    d_mask = np.abs(m.refine(frames, other_masks) - base).max()
    if reacts_to == "mask":
        assert d_mask > 1e-3 and d_frames < 1e-6, (d_mask, d_frames)
    else:
        assert d_frames > 1e-3 and d_mask < 1e-6, (d_frames, d_mask)


def test_short_segment_is_padded_with_last_frame_and_cropped(matter):
    frames, masks = clip(7, t=2)
    short = matter.refine_batch([(frames, masks)], keys=["k"])[0]
    padded = (np.concatenate([frames, frames[-1:], frames[-1:]]), np.concatenate([masks, masks[-1:], masks[-1:]]))
    full = matter.refine_batch([padded], keys=["k"])[0]
    assert short.shape == (2, H, W) and full.shape == (4, H, W)
    np.testing.assert_allclose(short, full[:2], atol=1e-6)


def test_uint8_variant_and_posterior_mode(tiny, matter):
    frames, masks = clip(8)
    a = matter.refine(frames, masks)
    u = matter.refine_batch_uint8([(frames, masks)])[0]
    assert u.dtype == np.uint8 and u.shape == a.shape
    assert np.abs(u.astype(int) - np.rint(a * 255).astype(int)).max() <= 1
    mode = build_matter("videomama", cfg_for(*tiny, posterior="mode"))
    m1, m2 = mode.refine(frames, masks), mode.refine(frames, masks)
    np.testing.assert_array_equal(m1, m2)
    assert np.abs(m1 - a).max() > 1e-5


def test_decode_chunking_keeps_shape(tiny):
    frames, masks = clip(9, t=4)
    alpha = build_matter("videomama", cfg_for(*tiny, decode_chunk=2, encode_chunk=3)).refine(frames, masks)
    assert alpha.shape == (4, H, W) and 0 <= alpha.min() and alpha.max() <= 1


@pytest.mark.parametrize("hw,long_side,expected", [
    ((1080, 1920), 1024, (576, 1024)),   # landscape reference size
    ((848, 480), 1024, (1024, 576)),     # SA-V portrait: aspect kept
    ((480, 848), 1024, (576, 1024)),
    ((720, 1280), 512, (320, 512)),
    ((1000, 1000), 1024, (1024, 1024)),
    ((64, 96), 128, (64, 128)),
    ((10, 500), 1024, (64, 1024)),       # never below one latent block
])
def test_resolution_policy(hw, long_side, expected):
    h, w = model_size(*hw, long_side=long_side)
    assert (h, w) == expected
    assert h % 64 == 0 and w % 64 == 0
    assert (h >= w) == (hw[0] >= hw[1]) or hw[0] == hw[1]


def test_svd_base_unet_is_refused_with_what_to_pass(tmp_path):
    ckpt, base = make_tiny(tmp_path, in_channels=8)
    with pytest.raises(CheckpointError) as e:
        build_matter("videomama", cfg_for(ckpt, base))
    msg = str(e.value)
    assert "SVD base UNet" in msg and "--checkpoint" in msg and "--base-model" in msg and "12" in msg


def test_missing_folders_are_named(tiny, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointMissing) as e:
        build_matter("videomama", cfg_for(missing, tiny[1]))
    assert str(missing / "unet") in str(e.value) and "stable-video-diffusion-img2vid-xt" in str(e.value)
    with pytest.raises(CheckpointMissing) as e:
        build_matter("videomama", cfg_for(tiny[0], missing))
    assert str(missing / "vae") in str(e.value) and "VideoMaMa release" in str(e.value)
    with pytest.raises(FileNotFoundError):
        build_matter("videomama", MatterConfig())


def test_gpu_benchmark_script_runs_production_path_on_cpu(capsys):
    from benchmarks.gpu_matter import main

    assert main(["--device", "cpu", "--height", "64", "--width", "128", "--source-height", "96",
                 "--source-width", "192", "--frames", "2", "--batch", "2", "--iters", "1",
                 "--stage-timing", "--uint8"]) == 0
    out = capsys.readouterr().out
    for text in ("FLOPs per segment", "[baseline eager]", "[optimised: uint8, batch 2]",
                 "encode", "unet", "decode", "alpha |optimised - baseline|"):
        assert text in out, text
    max_diff = float(out.split("alpha |optimised - baseline|: max ")[1].split(",")[0])
    assert max_diff <= 0.5 / 255 + 1e-5  # batching: last-bit noise; uint8: half a step


def test_staged_batches_give_the_same_mattes(matter):
    """prepare_batch (run by the actor ahead of the model) + refine_prepared == refine_batch_uint8."""
    clips = [clip(11), clip(12, h=50, w=70), clip(13)]
    keys = ["a_m000_0000", "b_m001_0000", "c_m002_0012"]
    direct = matter.refine_batch_uint8(clips, keys=keys)
    staged = matter.refine_prepared(matter.prepare_batch(clips, keys))
    assert len(staged) == 3
    for a, b in zip(direct, staged):
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)
    other = matter.refine_batch_uint8(clips, keys=["z_m000_0000", *keys[1:]])
    assert not np.array_equal(other[0], direct[0])   # the key seeds the noise
