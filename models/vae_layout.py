"""One memory format through the SVD VAE: channels-last 2-D activations, channels-last-3d temporal views.

diffusers' temporal decoder keeps activations as [B*T,C,H,W] and views them as [B,C,T,H,W]
(``reshape(B,T,C,H,W).permute(0,2,1,3,4)``) around every TemporalResnetBlock / AlphaBlender and the
final ``time_conv_out``. In NCHW that view is not dense in any 5-D memory format, so GroupNorm and
Conv3d materialise a contiguous copy of it, and the way back (``permute(...).reshape(B*T,C,H,W)``)
copies again; cuDNN adds NCHW<->NHWC conversions around its convolutions.

In channels-last the same view *is* channels_last_3d memory ([B*T,H,W,C] = [B,T,H,W,C]): nothing
has to move. :func:`to_channels_last` puts every Conv2d weight in channels_last and every Conv3d
weight in channels_last_3d (so cuDNN picks NHWC/NDHWC kernels and does not copy weights per call);
with the input in channels_last, the diffusers code itself then runs without layout copies *provided*
GroupNorm keeps the layout: aten's CUDA GroupNorm calls ``contiguous()`` (NCHW), the fused kernel of
:mod:`models.groupnorm` reads and writes strided in place (on CPU aten's kernel keeps channels-last).
No diffusers code is replaced; :class:`CopyCounter` proves the claim op by op (tests, benchmark).

Known remaining copies: diffusers' ``Upsample2D`` makes its input contiguous when the batch has >= 64
images or the output has > 2**31 elements (not at batch <= 4, chunk 8, 1024x576). Degenerate strides:
a single-frame decode chunk ([B,C,1,H,W]) is ambiguous between formats and aten's GroupNorm/convolution
make it contiguous (the fused kernel does not; keep chunks >= 2 frames). On CPU only: a batch-1 Conv3d
runs ``slow_conv3d``, which copies channels_last_3d input (oneDNN, used from batch 2, does not). cuDNN's
own behaviour is what ``benchmarks.gpu_matter --profile`` shows on a GPU.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

log = logging.getLogger(__name__)


def to_channels_last(model: nn.Module) -> dict[str, int]:
    """Conv2d weights -> channels_last, Conv3d weights -> channels_last_3d, in place; returns counts."""
    counts = {"conv2d": 0, "conv3d": 0}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
            counts["conv2d"] += 1
        elif isinstance(m, nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
            counts["conv3d"] += 1
    return counts


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last (4-D) or channels_last_3d (5-D); other ranks unchanged."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class CopyCounter:
    """Context manager counting the materialised tensor copies (``aten::copy_``: what ``clone``,
    ``contiguous``, ``reshape`` of a non-viewable tensor and dtype casts end in) made inside it,
    including those inside composite ops such as ``group_norm``; recorded with the torch profiler.

    ``min_numel`` ignores small copies (scalars, weights). Conversions inside a backend library
    (cuDNN's own NCHW<->NHWC kernels) are not aten ops: the GPU profile shows those.
    """

    def __init__(self, min_numel: int = 0):
        self.min_numel = min_numel
        self.copies: Counter = Counter()   # source shape -> calls
        self.bytes = 0
        self._prof = None

    def __enter__(self) -> "CopyCounter":
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._prof.__exit__(*exc)
        for ev in self._prof.events():
            if ev.name != "aten::copy_" or not ev.input_shapes:
                continue
            shape = tuple(ev.input_shapes[0])
            if _numel(shape) >= self.min_numel:
                self.copies[shape] += 1
                self.bytes += _numel(shape)

    @property
    def count(self) -> int:
        return sum(self.copies.values())
