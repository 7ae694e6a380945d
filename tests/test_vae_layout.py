"""One memory format through the tiny SVD VAE: no layout copies around the temporal blocks, same output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.arch import build_vae, tiny_vae_config
from models.base import MatterConfig, build_matter
from models.groupnorm import fuse_group_norms
from models.tiny import make_tiny
from models.vae_layout import CopyCounter, channels_last, to_channels_last

MIN_NUMEL = 2048   # activations of the tiny VAE at these sizes are larger; weights and scalars smaller


@pytest.fixture(scope="module")
def vaes():
    stock = build_vae(tiny_vae_config(), seed=1).eval()
    opt = copy.deepcopy(stock)
    fuse_group_norms(opt)
    counts = to_channels_last(opt)
    assert counts == {"conv2d": 41, "conv3d": 19}
    return stock, opt


def test_temporal_decoder_runs_without_layout_copies(vaes):
    stock, opt = vaes
    z = torch.randn(2 * 4, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    zc = channels_last(z)
    with torch.inference_mode():
        with CopyCounter(MIN_NUMEL) as before:
            want = stock.decode(z, num_frames=4).sample
        with CopyCounter(MIN_NUMEL) as after:
            got = opt.decode(zc, num_frames=4).sample
    # stock: every TemporalResnetBlock's GroupNorm/Conv3d input and every way back to [B*T,C,H,W] is copied
    assert before.count >= 9, before.copies
    five_d = [s for s in before.copies if len(s) == 5]
    assert five_d, "the stock copies include the [B,C,T,H,W] views of the temporal blocks"
    assert after.count == 0, after.copies
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_encoder_in_channels_last_matches_and_copies_no_more(vaes):
    stock, opt = vaes
    x = torch.rand(4, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    xc = channels_last(x)
    with torch.inference_mode():
        with CopyCounter(MIN_NUMEL) as before:
            want = stock.encode(x).latent_dist
        with CopyCounter(MIN_NUMEL) as after:
            got = opt.encode(xc).latent_dist
    # what remains is inherent to the stock code: Downsample2D's asymmetric F.pad
    assert after.count <= before.count, (after.copies, before.copies)
    torch.testing.assert_close(got.mean, want.mean, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.std, want.std, atol=2e-5, rtol=1e-5)


def test_matter_with_layout_and_fused_norm_equals_plain(tmp_path):
    ckpt, base = make_tiny(tmp_path, seed=0)
    common = dict(checkpoint=str(ckpt), base_model=str(base), device="cpu", long_side=128, segment_len=4,
                  decode_chunk=2)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 60, 100, 3), dtype=np.uint8)
    masks = np.zeros((3, 60, 100), bool)
    masks[:, 10:40, 20:70] = True
    plain = build_matter("videomama", MatterConfig(**common)).refine(frames, masks)
    fast = build_matter("videomama", MatterConfig(**common, channels_last=True, fused_group_norm=True))
    assert fast.describe()["fused_group_norm"] and fast.describe()["channels_last"]
    # float rounding through encode -> UNet -> decode: far below one 8-bit alpha step (3.9e-3)
    np.testing.assert_allclose(fast.refine(frames, masks), plain, atol=1e-4)
    assert fast.fingerprint() == build_matter("videomama", MatterConfig(**common)).fingerprint()
