"""Fused GroupNorm(+SiLU): the split reduction against torch.nn.GroupNorm, the Triton kernels under
Triton's interpreter (CPU), and the swap-in on the tiny SVD VAE (real diffusers classes)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import groupnorm as gn
from models.arch import build_vae, tiny_vae_config

ROOT = Path(__file__).resolve().parents[1]


def make_input(shape, dtype, layout: str, seed: int = 0) -> torch.Tensor:
    """``layout``: contiguous | cl (channels_last / _3d) | perm (a [B*T,C,H,W] tensor viewed as
    [B,C,T,H,W], as diffusers' temporal blocks do) | perm_cl (the same from a channels_last tensor)."""
    g = torch.Generator().manual_seed(seed)
    if layout.startswith("perm"):
        b, c, t, h, w = shape
        x = torch.randn(b * t, c, h, w, generator=g) * 3 + 2
        if layout == "perm_cl":
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
    elif layout == "sliced":
        x = (torch.randn(*shape[:-1], 2 * shape[-1], generator=g) * 3 + 2)[..., ::2]
    else:
        x = torch.randn(shape, generator=g) * 3 + 2
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.to(dtype)


def torch_ref(x, groups, w, b, eps, silu):
    y = F.group_norm(x.float(), groups, w.float(), b.float(), eps)
    return F.silu(y) if silu else y


CASES = [  # (shape, groups, layout, n_splits): small, the interpreter runs programs one by one
    ((2, 16, 9, 10), 4, "contiguous", None),
    ((2, 64, 9, 10), 32, "cl", 3),            # the VAE's 32 groups, all in one channels-last tile
    ((1, 16, 4, 6, 10), 4, "contiguous", 5),
    ((1, 64, 3, 8, 8), 32, "cl", 4),
    ((2, 16, 3, 5, 6), 4, "perm", 2),
    ((2, 32, 3, 5, 6), 8, "perm_cl", 3),
    ((1, 24, 5, 7), 8, "contiguous", 3),      # 3 channels per group: padded tile
    ((2, 16, 50), 4, "contiguous", 7),        # the attention's [B, C, HW]
    ((2, 16, 3, 5), 4, "sliced", 2),          # not dense: computed on a contiguous copy
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,groups,layout,n_splits", CASES)
def test_reference_split_reduction_matches_group_norm(shape, groups, layout, n_splits, dtype):
    x = make_input(shape, dtype, layout)
    c = x.shape[1]
    w, b = torch.randn(c).to(dtype), torch.randn(c).to(dtype)
    for silu in (False, True):
        want = torch_ref(x, groups, w, b, 1e-6, silu)
        got = gn.reference_group_norm(x, groups, w, b, 1e-6, silu, n_splits=n_splits)
        assert got.dtype == dtype and (got.stride() == x.stride() or layout == "sliced")
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        else:  # one bf16 rounding of the output
            torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=1e-2)


def test_plan_splits_and_addresses_views_in_place():
    x = make_input((2, 32, 3, 5, 6), torch.float32, "perm_cl")
    assert gn.bcts(x) == (2, 32, 1, 90, (32 * 90, 1, 0, 32))     # channels_last_3d memory: T,H,W fold into one
    y = make_input((2, 32, 3, 5, 6), torch.float32, "perm")
    assert gn.bcts(y) == (2, 32, 3, 30, (32 * 3 * 30, 30, 32 * 30, 1))        # T and HW strided apart
    assert gn.bcts(torch.randn(2, 8, 4, 6, 6)[:, :, ::2, ::2, 1:]) is None   # not foldable: copied first
    plan = gn.make_plan(x, 8, n_splits=4)
    assert plan.block_g == 8 and plan.block_c == 4                          # channels-last: all groups per tile
    assert plan.n_splits * plan.chunk >= plan.rows > (plan.n_splits - 1) * plan.chunk
    assert gn.make_plan(y, 8, n_splits=4).block_g == 1                      # channels-first: one group per tile
    big = torch.empty(1, 128, 8, 72, 128).contiguous(memory_format=torch.channels_last_3d)
    assert gn.make_plan(big, 32, target_programs=1056).n_splits > 100        # batch 1: split to fill the GPU


def test_auto_on_cpu_is_torch_and_keeps_memory_format():
    x = make_input((2, 64, 9, 10), torch.float32, "cl")
    w, b = torch.randn(64), torch.randn(64)
    y = gn.group_norm(x, 32, w, b, 1e-6, silu=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch_ref(x, 32, w, b, 1e-6, True), atol=1e-5, rtol=1e-5)
    ncs = torch.randn(2, 8, 4, 6, 6)[:, :, ::2, ::2, 1:]
    torch.testing.assert_close(gn.group_norm(ncs, 4, impl="reference"), F.group_norm(ncs, 4), atol=1e-5, rtol=1e-5)


_CASES_CHECK = r"""
import json, torch
from models import groupnorm as gn
from tests.test_groupnorm import CASES, make_input, torch_ref
out = []
for shape, groups, layout, n_splits in CASES:
    for dtype in (torch.float32, torch.bfloat16):
        x = make_input(shape, dtype, layout)
        c = x.shape[1]
        w, b = torch.randn(c).to(dtype), torch.randn(c).to(dtype)
        silu = len(out) % 3 != 0
        y = gn.group_norm(x, groups, w, b, 1e-6, silu, impl="triton") if n_splits is None else \
            gn.triton_group_norm(x, groups, w, b, 1e-6, silu, n_splits=n_splits)
        want = torch_ref(x, groups, w, b, 1e-6, silu)
        ref = gn.reference_group_norm(x, groups, w, b, 1e-6, silu, n_splits=n_splits)
        ulp = want.abs().clamp(min=2.0 ** -6) * 2.0 ** -7
        out.append({"case": [list(shape), layout, str(dtype)],
                    "strides_kept": y.stride() == x.stride() or layout == "sliced",
                    "err": (y.float() - want).abs().max().item(),
                    "err_ulps": ((y.float() - ref.float()).abs() / ulp).max().item()})
print(json.dumps(out))
"""

_VAE_CHECK = r"""
import copy, json, torch
from models import groupnorm as gn
from models.arch import build_vae, tiny_vae_config
from models.vae_layout import channels_last, to_channels_last
gn.TILE = 16384   # fewer, larger tiles: the interpreter's cost is per op, not per element
vae = build_vae(tiny_vae_config(), seed=1).eval()
fused = copy.deepcopy(vae)
counts = gn.fuse_group_norms(fused, impl="triton")
to_channels_last(fused)
z = torch.randn(2, 4, 2, 3, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    a = vae.decode(z, num_frames=2).sample
    b = fused.decode(channels_last(z), num_frames=2).sample
print(json.dumps({"counts": counts, "err": (a - b).abs().max().item(), "scale": a.abs().max().item()}))
"""


def run_interpreted(code: str) -> object:
    """Run ``code`` in a fresh process with TRITON_INTERPRET=1 (it must be set before Triton is imported);
    its last stdout line is JSON."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


@needs_triton
def test_triton_kernels_under_interpreter():
    """The real kernels on CPU tensors (Triton's interpreter), every layout and split of CASES, fp32 and bf16."""
    cases = run_interpreted(_CASES_CHECK)
    assert len(cases) == 2 * len(CASES)
    for case in cases:
        assert case["strides_kept"], case
        if case["case"][2] == "torch.float32":
            assert case["err"] < 3e-5 and case["err_ulps"] < 0.01, case
        else:
            # the interpreter truncates fp32 -> bf16 (the GPU rounds to nearest): within one bf16 step
            # of the same arithmetic in torch, and of GroupNorm in fp32
            assert case["err_ulps"] <= 1.01 and case["err"] < 0.1, case


@needs_triton
def test_tiny_vae_decode_with_triton_kernels_matches_stock():
    report = run_interpreted(_VAE_CHECK)
    assert report["counts"] == {"resnet2d": 15, "temporal_resnet": 9, "norm_out": 2, "attention": 2}, report
    assert report["err"] < 1e-4 * max(1.0, report["scale"]), report


@pytest.fixture(scope="module")
def tiny_vae():
    return build_vae(tiny_vae_config(), seed=1).eval()


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_swap_in_decodes_and_encodes_like_stock(tiny_vae, impl):
    fused = copy.deepcopy(tiny_vae)
    counts = gn.fuse_group_norms(fused, impl=impl)
    # tiny VAE: 4 encoder levels x 1 resnet + 2 mid, 2 decoder mid (spatial+temporal) + 4 x 2 up, ...
    assert counts == {"resnet2d": 15, "temporal_resnet": 9, "norm_out": 2, "attention": 2}, counts
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in fused.modules())
    assert list(fused.state_dict()) == list(tiny_vae.state_dict())          # same keys: checkpoints still load
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * 3, 4, 6, 8, generator=g)
    x = torch.rand(4, 3, 48, 64, generator=g) * 2 - 1
    with torch.inference_mode():
        want, got = tiny_vae.decode(z, num_frames=3).sample, fused.decode(z, num_frames=3).sample
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        e_want, e_got = tiny_vae.encode(x).latent_dist, fused.encode(x).latent_dist
        torch.testing.assert_close(e_got.mean, e_want.mean, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(e_got.std, e_want.std, atol=2e-5, rtol=1e-5)


def test_custom_op_is_traceable_without_graph_breaks():
    """The op torch.compile sees on CUDA: schema, fake (meta) kernel and strides agree with the real one."""
    x = make_input((2, 32, 3, 5, 6), torch.float32, "perm_cl")
    w, b = torch.randn(32), torch.randn(32)
    op = torch.ops.mava_factory.group_norm
    torch.library.opcheck(op, (x, w, b, 8, 1e-6, True))
    compiled = torch.compile(lambda t: op(t, w, b, 8, 1e-6, True) * 2, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, 2 * torch_ref(x, 8, w, b, 1e-6, True), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
