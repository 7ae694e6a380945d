"""Fused GroupNorm(+SiLU) with a split reduction, for the SVD VAE's 4-D and 5-D activations.

aten's GroupNorm gives one thread block per (batch, group): on the temporal decoder's batch-1 5-D
tensors ([1,128,8,576,1024]: 32 blocks on a 132-SM H100) it starves, and on CUDA it first copies a
channels-last input to NCHW. This module splits each group's reduction over the spatial/temporal
extent into many programs:

1. ``stats``: grid (batch x group-block, split); each program reduces one chunk of the flattened
   extent for ``BLOCK_G`` groups (per-lane Welford, lanes combined exactly as below) and writes partial
   (mean, M2, count) per group;
2. ``finalize``: one program per (batch, group) combines its partials into mean and 1/std
   (n = sum n_i, mean = sum n_i mean_i / n, M2 = sum M2_i + n_i (mean_i - mean)^2: plain sums);
3. ``apply``: the same grid as 1 normalises its chunk, applies the affine and optionally SiLU, and
   stores in the input's own strides (channels-last in, channels-last out: no layout copy).

The tensor is addressed as [B, C, T, S] with four strides, so NCHW, NCTHW, channels_last,
channels_last_3d and the temporal blocks' permuted views ([B*T,C,H,W] seen as [B,C,T,H,W]) are all
read in place. Channels-last tiles cover every group of a row block (coalesced reads); channels-first
tiles cover one group.

:func:`group_norm` runs the Triton kernels for CUDA tensors when Triton is importable (and for CPU
tensors under Triton's interpreter, ``TRITON_INTERPRET=1``, when asked with ``impl="triton"``);
otherwise ``torch.nn.functional.group_norm`` (+ SiLU). :func:`reference_group_norm` is the same split
reduction in plain torch (the kernel's arithmetic, testable anywhere). :func:`fuse_group_norms` swaps
the VAE's GroupNorm(+SiLU) pairs for :class:`FusedGroupNorm` modules that share the original
parameters (state dicts are unchanged; diffusers is not forked).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

try:  # Triton is optional: CPU installs run the torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

HAVE_TRITON = triton is not None
TILE = 2048                 # elements per tile a program loads at once
PROGRAMS_PER_SM = 8         # split target: enough programs to fill the GPU at batch 1
MIN_ROWS_PER_SPLIT = 4      # a split holds at least this many tiles' rows


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1`` before Triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """How one GroupNorm call is tiled and split; shared by the kernel launcher and the reference."""

    B: int
    C: int
    G: int
    T: int
    S: int
    strides: tuple[int, int, int, int]   # x addressed as [B, C, T, S]
    block_g: int                          # groups per program
    block_c: int                          # channels of a group, padded to a power of two
    block_l: int                          # rows (positions of the T*S extent) per tile
    chunk: int                            # rows per split (multiple of block_l)
    n_splits: int

    @property
    def cg(self) -> int:
        return self.C // self.G

    @property
    def rows(self) -> int:
        return self.T * self.S


def bcts(x: torch.Tensor) -> tuple[int, int, int, int, tuple[int, int, int, int]] | None:
    """(B, C, T, S, strides) addressing ``x`` [N, C, *spatial] as [B, C, T, S] without a copy, or None
    when the spatial dims cannot be folded into two strided dims."""
    if x.dim() < 2:
        return None
    shape, strides = list(x.shape[2:]), list(x.stride()[2:])
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    folded: list[list[int]] = []          # [size, stride] from the innermost dim out
    for n, s in reversed(dims):
        if folded and s == folded[-1][0] * folded[-1][1]:
            folded[-1][0] *= n
            folded[-1][1] = folded[-1][1]  # keeps the inner stride
        else:
            folded.append([n, s])
    if len(folded) > 2:
        return None
    while len(folded) < 2:
        folded.append([1, 0])
    (S, ss), (T, st) = folded
    return x.shape[0], x.shape[1], T, S, (x.stride(0), x.stride(1), st, ss)


def addressable(x: torch.Tensor) -> bool:
    """True when the kernels read ``x`` in place and write an output of the same strides: dense,
    non-overlapping (``empty_like`` keeps its strides) and foldable to [B, C, T, S]."""
    return bcts(x) is not None and torch.empty_like(x, device="meta").stride() == x.stride()


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two dividing ``n``, at most ``cap``."""
    p = 1
    while n % (p * 2) == 0 and p * 2 <= cap:
        p *= 2
    return p


def make_plan(x: torch.Tensor, num_groups: int, target_programs: int | None = None,
              n_splits: int | None = None) -> Plan:
    """Tile and split ``x`` for ``num_groups`` groups (``n_splits`` forces the split count, for tests)."""
    view = bcts(x)
    if view is None:
        raise ValueError(f"cannot address strides {x.stride()} of {tuple(x.shape)} as [B,C,T,S]")
    B, C, T, S, strides = view
    if C % num_groups:
        raise ValueError(f"{C} channels are not divisible into {num_groups} groups")
    G, cg = num_groups, C // num_groups
    block_c = triton_next_pow2(cg)
    channels_last = strides[1] == 1 and C > 1
    block_g = _pow2_divisor(G, max(1, TILE // (4 * block_c))) if channels_last else 1
    block_l = max(1, TILE // (block_g * block_c))
    rows = T * S
    block_l = min(block_l, triton_next_pow2(rows))
    if n_splits is None:
        if target_programs is None:
            target_programs = _default_target(x.device)
        programs = B * (G // block_g)
        n_splits = max(1, math.ceil(target_programs / programs))
        n_splits = min(n_splits, max(1, rows // (MIN_ROWS_PER_SPLIT * block_l)))
    n_splits = max(1, min(n_splits, math.ceil(rows / block_l)))
    chunk = math.ceil(math.ceil(rows / n_splits) / block_l) * block_l
    n_splits = math.ceil(rows / chunk)
    return Plan(B, C, G, T, S, strides, block_g, block_c, block_l, chunk, n_splits)


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _default_target(device: torch.device) -> int:
    if device.type == "cuda":
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return 2   # CPU: the interpreter runs programs one by one


# ------------------------------------------------------------------------------------- reference


def reference_stats(x: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd-less variance) per [B, G] by the kernel's split reduction, in plain torch (fp32)."""
    B, G, cg, T, S = plan.B, plan.G, plan.cg, plan.T, plan.S
    xs = x.as_strided((B, plan.C, T, S), plan.strides).float().reshape(B, G, cg, T * S)
    parts = []
    for k in range(plan.n_splits):
        c = xs[..., k * plan.chunk:(k + 1) * plan.chunk]
        n = torch.full((B, G), float(c[0, 0].numel()), dtype=torch.float32, device=x.device)
        mean = c.mean(dim=(2, 3))
        m2 = ((c - mean[..., None, None]) ** 2).sum(dim=(2, 3))
        parts.append((mean, m2, n))
    means, m2s, ns = (torch.stack(v) for v in zip(*parts))              # [splits, B, G]
    n = ns.sum(0)
    mean = (ns * means).sum(0) / n
    m2 = (m2s + ns * (means - mean) ** 2).sum(0)
    return mean, m2 / n


def reference_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float, silu: bool = False,
                         n_splits: int | None = None) -> torch.Tensor:
    """The kernels' algorithm (split Welford partials, Chan combine, fp32 affine + SiLU) in plain torch."""
    if not addressable(x):
        x = x.contiguous()
    plan = make_plan(x, num_groups, n_splits=n_splits)
    mean, var = reference_stats(x, plan)
    rstd = torch.rsqrt(var + eps)
    B, C, T, S = plan.B, plan.C, plan.T, plan.S
    xs = x.as_strided((B, C, T, S), plan.strides).float()
    scale = rstd.repeat_interleave(plan.cg, dim=1)                       # [B, C]
    shift = -mean.repeat_interleave(plan.cg, dim=1) * scale
    if weight is not None:
        scale, shift = scale * weight.float(), shift * weight.float()
    if bias is not None:
        shift = shift + bias.float()
    y = xs * scale[..., None, None] + shift[..., None, None]
    if silu:
        y = y * torch.sigmoid(y)
    out = torch.empty_like(x)
    out.as_strided((B, C, T, S), plan.strides).copy_(y.to(x.dtype))
    return out


# ---------------------------------------------------------------------------------------- kernels

if HAVE_TRITON:

    @triton.jit
    def _gn_stats_kernel(x_ptr, part_ptr, G, S, rows, chunk, n_splits, bg_stride,
                         sb, sc, st, ss, CG: tl.constexpr, ONE_T: tl.constexpr,
                         BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        ngb = G // BLOCK_G
        b = pid // ngb
        g0 = (pid % ngb) * BLOCK_G
        offs_g = tl.arange(0, BLOCK_G)
        offs_c = tl.arange(0, BLOCK_C)
        chan = ((g0 + offs_g)[:, None] * CG + offs_c[None, :]).to(tl.int64)      # [BG, BC]
        cmask = (offs_c < CG)[None, :] & (offs_g < BLOCK_G)[:, None]
        base = x_ptr + b.to(tl.int64) * sb
        start = split * chunk
        end = tl.minimum(start + chunk, rows)
        mean = tl.zeros((BLOCK_L, BLOCK_G, BLOCK_C), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_L, BLOCK_G, BLOCK_C), dtype=tl.float32)
        cnt = tl.zeros((BLOCK_L, BLOCK_G, BLOCK_C), dtype=tl.float32)
        for l0 in range(start, end, BLOCK_L):
            l = (l0 + tl.arange(0, BLOCK_L)).to(tl.int64)
            if ONE_T:                                                            # rows fold: no div/mod
                row_off = l * ss
            else:
                row_off = (l // S) * st + (l % S) * ss                           # [BL]
            m = (l < end)[:, None, None] & cmask[None, :, :]
            x = tl.load(base + row_off[:, None, None] + chan[None, :, :] * sc, mask=m, other=0.0).to(tl.float32)
            cnt_new = cnt + m.to(tl.float32)
            delta = x - mean
            mean = mean + tl.where(m, delta / tl.maximum(cnt_new, 1.0), 0.0)
            m2 = m2 + tl.where(m, delta * (x - mean), 0.0)
            cnt = cnt_new
        # combine the lanes at once: n = sum n_i, mean = sum n_i mean_i / n, M2 = sum M2_i + n_i (mean_i - mean)^2
        n = tl.sum(tl.sum(cnt, axis=2), axis=0)                                    # [BG]
        g_mean = tl.sum(tl.sum(cnt * mean, axis=2), axis=0) / tl.maximum(n, 1.0)
        d = mean - g_mean[None, :, None]
        g_m2 = tl.sum(tl.sum(m2 + cnt * d * d, axis=2), axis=0)
        idx = (b * G + g0 + offs_g) * n_splits + split
        tl.store(part_ptr + idx, g_mean)
        tl.store(part_ptr + bg_stride + idx, g_m2)
        tl.store(part_ptr + 2 * bg_stride + idx, n)

    @triton.jit
    def _gn_finalize_kernel(part_ptr, stat_ptr, n_splits, bg_stride, n_bg, eps,
                            BLOCK_BG: tl.constexpr, BLOCK_S: tl.constexpr):
        bg = tl.program_id(0) * BLOCK_BG + tl.arange(0, BLOCK_BG)                 # [BBG]
        bmask = bg < n_bg
        s = tl.arange(0, BLOCK_S)
        n_acc = tl.zeros((BLOCK_BG, BLOCK_S), dtype=tl.float32)
        sum_acc = tl.zeros((BLOCK_BG, BLOCK_S), dtype=tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):                     # pass 1: count and mean
            m = bmask[:, None] & (s0 + s < n_splits)[None, :]
            idx = bg[:, None] * n_splits + s0 + s[None, :]
            pm = tl.load(part_ptr + idx, mask=m, other=0.0)
            pn = tl.load(part_ptr + 2 * bg_stride + idx, mask=m, other=0.0)
            n_acc += pn
            sum_acc += pn * pm
        n = tl.sum(n_acc, axis=1)
        mean = tl.sum(sum_acc, axis=1) / tl.maximum(n, 1.0)
        m2_acc = tl.zeros((BLOCK_BG, BLOCK_S), dtype=tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):                     # pass 2: M2 about the group mean
            m = bmask[:, None] & (s0 + s < n_splits)[None, :]
            idx = bg[:, None] * n_splits + s0 + s[None, :]
            pm = tl.load(part_ptr + idx, mask=m, other=0.0)
            pv = tl.load(part_ptr + bg_stride + idx, mask=m, other=0.0)
            pn = tl.load(part_ptr + 2 * bg_stride + idx, mask=m, other=0.0)
            d = pm - mean[:, None]
            m2_acc += pv + pn * d * d
        var = tl.sum(m2_acc, axis=1) / tl.maximum(n, 1.0)
        tl.store(stat_ptr + bg, mean, mask=bmask)
        tl.store(stat_ptr + n_bg + bg, 1.0 / tl.sqrt(var + eps), mask=bmask)

    @triton.jit
    def _gn_apply_kernel(x_ptr, y_ptr, stat_ptr, w_ptr, b_ptr, G, S, rows, chunk, n_bg,
                         sb, sc, st, ss, yb, yc, yt, ys, CG: tl.constexpr, ONE_T: tl.constexpr,
                         SILU: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_L: tl.constexpr):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        ngb = G // BLOCK_G
        b = pid // ngb
        g0 = (pid % ngb) * BLOCK_G
        offs_g = tl.arange(0, BLOCK_G)
        offs_c = tl.arange(0, BLOCK_C)
        cmask = (offs_c < CG)[None, :] & (offs_g < BLOCK_G)[:, None]
        chan = (g0 + offs_g)[:, None] * CG + offs_c[None, :]                      # [BG, BC]
        mean = tl.load(stat_ptr + b * G + g0 + offs_g)
        rstd = tl.load(stat_ptr + n_bg + b * G + g0 + offs_g)
        w = tl.load(w_ptr + chan, mask=cmask, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + chan, mask=cmask, other=0.0).to(tl.float32)
        scale = w * rstd[:, None]
        shift = bias - mean[:, None] * scale
        chan = chan.to(tl.int64)
        xbase = x_ptr + b.to(tl.int64) * sb
        ybase = y_ptr + b.to(tl.int64) * yb
        start = split * chunk
        end = tl.minimum(start + chunk, rows)
        for l0 in range(start, end, BLOCK_L):
            l = (l0 + tl.arange(0, BLOCK_L)).to(tl.int64)
            if ONE_T:
                x_off = l * ss
                y_off = l * ys
            else:
                t, s = l // S, l % S
                x_off = t * st + s * ss
                y_off = t * yt + s * ys
            m = (l < end)[:, None, None] & cmask[None, :, :]
            x = tl.load(xbase + x_off[:, None, None] + chan[None, :, :] * sc, mask=m, other=0.0).to(tl.float32)
            y = x * scale[None, :, :] + shift[None, :, :]
            if SILU:
                y = y * tl.sigmoid(y)
            tl.store(ybase + y_off[:, None, None] + chan[None, :, :] * yc,
                     y.to(y_ptr.dtype.element_ty), mask=m)


def triton_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                      silu: bool = False, n_splits: int | None = None) -> torch.Tensor:
    """The three Triton kernels (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``)."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    if not addressable(x):
        x = x.contiguous()              # rare (sliced views): then y has x's strides exactly
    plan = make_plan(x, num_groups, n_splits=n_splits)
    y = torch.empty_like(x)
    assert y.stride() == x.stride()
    bgs = plan.B * plan.G
    part = torch.empty((3, bgs, plan.n_splits), device=x.device, dtype=torch.float32)
    stat = torch.empty((2, bgs), device=x.device, dtype=torch.float32)
    grid = (plan.B * (plan.G // plan.block_g), plan.n_splits)
    meta = dict(CG=plan.cg, ONE_T=plan.T == 1, BLOCK_G=plan.block_g, BLOCK_C=plan.block_c, BLOCK_L=plan.block_l)
    _gn_stats_kernel[grid](x, part, plan.G, plan.S, plan.rows, plan.chunk, plan.n_splits,
                           bgs * plan.n_splits, *plan.strides, **meta)
    block_s = min(1024, triton_next_pow2(plan.n_splits))
    block_bg = min(triton_next_pow2(bgs), max(1, 4096 // block_s), 64)
    _gn_finalize_kernel[(triton.cdiv(bgs, block_bg),)](part, stat, plan.n_splits, bgs * plan.n_splits, bgs,
                                                       float(eps), BLOCK_BG=block_bg, BLOCK_S=block_s)
    _gn_apply_kernel[grid](x, y, stat, weight, bias, plan.G, plan.S, plan.rows, plan.chunk, bgs,
                           *plan.strides, *plan.strides, SILU=bool(silu), **meta)
    return y


# ----------------------------------------------------------------------------- dispatch + modules


@torch.library.custom_op("mava_factory::group_norm", mutates_args=())
def _group_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
                   silu: bool) -> torch.Tensor:
    """Opaque to torch.compile (no graph break): the Triton kernels on CUDA, torch elsewhere."""
    if x.is_cuda and HAVE_TRITON:
        return triton_group_norm(x, num_groups, weight, bias, eps, silu)
    return torch_group_norm(x, num_groups, weight, bias, eps, silu)


@_group_norm_op.register_fake
def _(x, weight, bias, num_groups, eps, silu):
    return torch.empty_like(x if addressable(x) else x.contiguous())


def torch_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, silu: bool = False) -> torch.Tensor:
    """``F.group_norm`` (+ in-place SiLU): the fallback where the kernels do not run."""
    y = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(y, inplace=True) if silu else y


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, silu: bool = False,
               impl: str = "auto") -> torch.Tensor:
    """GroupNorm over [N, C, *spatial] (optionally followed by SiLU), output in ``x``'s memory format.

    ``impl``: ``auto`` (Triton kernels for CUDA tensors when Triton is importable, else torch),
    ``triton`` (force the kernels; CPU tensors need ``TRITON_INTERPRET=1``), ``torch``, ``reference``.
    """
    if impl == "torch" or (impl == "auto" and not (x.is_cuda and HAVE_TRITON)):
        return torch_group_norm(x, num_groups, weight, bias, eps, silu)
    if impl == "reference":
        return reference_group_norm(x, num_groups, weight, bias, eps, silu)
    if impl not in ("auto", "triton"):
        raise ValueError(f"impl must be auto, triton, torch or reference, got {impl!r}")
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        return torch_group_norm(x, num_groups, weight, bias, eps, silu)   # the kernels have no backward
    c = x.shape[1]
    w = weight if weight is not None else torch.ones(c, device=x.device, dtype=x.dtype)
    b = bias if bias is not None else torch.zeros(c, device=x.device, dtype=x.dtype)
    if impl == "triton" and not x.is_cuda:
        return triton_group_norm(x, num_groups, w, b, eps, silu)          # interpreter: no custom op needed
    return _group_norm_op(x, w, b, num_groups, float(eps), bool(silu))


class FusedGroupNorm(nn.Module):
    """Drop-in for ``nn.GroupNorm`` (optionally fused with the SiLU after it); shares the original's
    ``weight``/``bias`` parameters, so state dict keys and values are unchanged."""

    def __init__(self, norm: nn.GroupNorm, silu: bool = False, impl: str = "auto"):
        super().__init__()
        self.num_groups, self.num_channels, self.eps, self.affine = (norm.num_groups, norm.num_channels,
                                                                     norm.eps, norm.affine)
        self.weight, self.bias = norm.weight, norm.bias
        self.silu, self.impl = silu, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.silu, self.impl)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, silu={self.silu}"


def _is_silu(m) -> bool:
    return isinstance(m, nn.SiLU)


def fuse_group_norms(model: nn.Module, impl: str = "auto") -> dict[str, int]:
    """Swap the GroupNorm(+SiLU) pairs of diffusers' VAE modules for :class:`FusedGroupNorm`, in place.

    Patterns (only where the swap is exact): ResnetBlock2D and TemporalResnetBlock without a time
    embedding projection (norm1/norm2 then ``nonlinearity``: SiLU fused, ``nonlinearity`` becomes
    Identity), the encoder's and the temporal decoder's ``conv_norm_out`` + ``conv_act``, and the
    mid-block Attention's ``group_norm`` (no SiLU). Returns how many modules of each kind were swapped.
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import TemporalDecoder
    from diffusers.models.autoencoders.vae import Encoder
    from diffusers.models.resnet import ResnetBlock2D, TemporalResnetBlock

    counts = {"resnet2d": 0, "temporal_resnet": 0, "norm_out": 0, "attention": 0}
    for mod in list(model.modules()):
        if isinstance(mod, ResnetBlock2D):
            if (mod.time_emb_proj is None and _is_silu(mod.nonlinearity) and mod.time_embedding_norm == "default"
                    and isinstance(mod.norm1, nn.GroupNorm) and isinstance(mod.norm2, nn.GroupNorm)):
                mod.norm1, mod.norm2 = FusedGroupNorm(mod.norm1, True, impl), FusedGroupNorm(mod.norm2, True, impl)
                mod.nonlinearity = nn.Identity()
                counts["resnet2d"] += 1
        elif isinstance(mod, TemporalResnetBlock):
            if (mod.time_emb_proj is None and _is_silu(mod.nonlinearity)
                    and isinstance(mod.norm1, nn.GroupNorm) and isinstance(mod.norm2, nn.GroupNorm)):
                mod.norm1, mod.norm2 = FusedGroupNorm(mod.norm1, True, impl), FusedGroupNorm(mod.norm2, True, impl)
                mod.nonlinearity = nn.Identity()
                counts["temporal_resnet"] += 1
        elif isinstance(mod, (Encoder, TemporalDecoder)):
            if isinstance(mod.conv_norm_out, nn.GroupNorm) and _is_silu(mod.conv_act):
                mod.conv_norm_out = FusedGroupNorm(mod.conv_norm_out, True, impl)
                mod.conv_act = nn.Identity()
                counts["norm_out"] += 1
        elif isinstance(mod, Attention):
            if isinstance(mod.group_norm, nn.GroupNorm):
                mod.group_norm = FusedGroupNorm(mod.group_norm, False, impl)
                counts["attention"] += 1
    how = {"auto": "Triton kernels on CUDA tensors, torch elsewhere" if HAVE_TRITON else "torch (no Triton)",
           "triton": "Triton kernels", "torch": "torch", "reference": "torch reference of the split reduction"}
    log.info("fused GroupNorm swapped in: %s (%s)", counts, how.get(impl, impl))
    return counts
