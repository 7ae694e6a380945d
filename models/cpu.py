"""CPU matters for machines without a GPU or weights: ``mask`` (baseline), ``guided``, ``closed-form``.

All follow the contract ``refine(frames uint8[T,H,W,3], masks bool[T,H,W]) -> float32[T,H,W] in [0,1]``
and work frame by frame. ``guided`` and ``closed-form`` only change pixels in an unknown band around the
mask edge; the band's half-width scales with the object (sqrt of its area), bounded by the resolution.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from models.base import MatterBase, MatterConfig

log = logging.getLogger(__name__)


@dataclass
class BandPolicy:
    """Half-width of the unknown band around the mask edge, in pixels."""

    object_frac: float = 0.1      # fraction of sqrt(object area) (tuned on benchmarks.matter_quality)
    min_px: int = 3
    max_frac: float = 0.02        # at most this fraction of the frame's long side
    min_area_px: int = 16         # smaller masks are returned unchanged

    def width(self, area: int, height: int, width: int) -> int:
        w = self.object_frac * np.sqrt(area)
        w = min(w, self.max_frac * max(height, width))
        return int(max(self.min_px, round(w)))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def trimap_regions(mask: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(sure foreground, sure background) bool maps: the mask eroded / its complement dilated by ``radius``."""
    m = mask.astype(np.uint8)
    k = _disk(radius)
    fg = cv2.erode(m, k, borderType=cv2.BORDER_REPLICATE).astype(bool)
    bg = ~cv2.dilate(m, k, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return fg, bg


class MaskMatter(MatterBase):
    """alpha = mask: the baseline every quality figure is compared against."""

    name = "mask"
    deterministic = True
    reads = ()

    def __init__(self, cfg: MatterConfig | None = None):
        self.cfg = cfg or MatterConfig()

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        self.check_inputs(frames, masks)
        return masks.astype(np.float32)


class _BandMatter(MatterBase):
    """Shared frame loop: keep the mask outside the band, fall back to it for tiny or empty masks."""

    deterministic = True
    reads = ()  # no MatterConfig option changes these mattes; their constants do

    def __init__(self, cfg: MatterConfig | None = None, band: BandPolicy | None = None):
        self.cfg = cfg or MatterConfig()
        self.band = band or BandPolicy()

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        self.check_inputs(frames, masks)
        out = masks.astype(np.float32)
        for i in range(len(frames)):
            area = int(masks[i].sum())
            h, w = masks[i].shape
            if area < self.band.min_area_px or area == h * w:
                continue  # nothing to refine: empty, tiny or full mask
            radius = self.band.width(area, h, w)
            out[i] = self.refine_frame(frames[i], masks[i], radius)
        return out

    def refine_frame(self, frame: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict:
        return {"band": asdict(self.band)}

    def constants(self) -> dict:
        return self.params()


class GuidedMatter(_BandMatter):
    """Guided filter (cv2.ximgproc) of the mask, guided by the frame, inside the unknown band."""

    name = "guided"

    def __init__(self, cfg: MatterConfig | None = None, band: BandPolicy | None = None,
                 radius_scale: float = 0.5, eps: float = 0.01):
        super().__init__(cfg, band)
        self.radius_scale = radius_scale   # filter radius = band half-width x this
        self.eps = eps                     # regularisation (OpenCV squares it), guide in [0,1]

    def refine_frame(self, frame: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
        fg, bg = trimap_regions(mask, radius)
        guide = frame.astype(np.float32) / 255.0
        r = max(1, int(round(radius * self.radius_scale)))
        filtered = cv2.ximgproc.guidedFilter(guide, mask.astype(np.float32), r, self.eps)
        alpha = np.clip(filtered, 0.0, 1.0)
        alpha[fg] = 1.0
        alpha[bg] = 0.0
        return alpha

    def params(self) -> dict:
        return {**super().params(), "radius_scale": self.radius_scale, "eps": self.eps}


class ClosedFormMatter(_BandMatter):
    """pymatting closed-form matting on a trimap from the mask (eroded = fg, outside dilated = bg).

    The solve runs on the band's bounding box, downscaled so the box is at most ``max_side`` (the
    Laplacian solve grows with the pixel count; optionally so the band is ``solve_band_px`` wide);
    the alpha is upsampled and used inside the band only.
    A trimap without foreground or background falls back to the mask.
    """

    name = "closed-form"

    def __init__(self, cfg: MatterConfig | None = None, band: BandPolicy | None = None,
                 max_side: int = 512, crop_margin: int = 8, epsilon: float = 1e-3, solve_band_px: float = 0.0):
        # tuned on the synthetic split: a narrower relative band than guided's (closed form degrades on
        # thin structures such as hair inside wide bands) but never under 6 px (the 3x3 Laplacian needs room)
        super().__init__(cfg, band or BandPolicy(object_frac=0.05, min_px=6))
        self.max_side = max_side
        self.solve_band_px = solve_band_px   # >0: solve at a scale where the band is about this wide (px)
        self.crop_margin = crop_margin
        self.epsilon = epsilon   # matting Laplacian regularisation (pymatting default 1e-7; tuned)

    def refine_frame(self, frame: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
        fg, bg = trimap_regions(mask, radius)
        if not fg.any() or not bg.any():
            return mask.astype(np.float32)
        unknown = ~(fg | bg)
        # solve only on the bounding box of the band (plus a margin): same answer, far fewer pixels
        ys, xs = np.nonzero(unknown)
        h, w = mask.shape
        pad = self.crop_margin + radius
        y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
        img = frame[y0:y1, x0:x1].astype(np.float64) / 255.0
        tri = np.full(img.shape[:2], 0.5)
        tri[fg[y0:y1, x0:x1]] = 1.0
        tri[bg[y0:y1, x0:x1]] = 0.0
        if (tri == 1.0).sum() == 0 or (tri == 0.0).sum() == 0:
            return mask.astype(np.float32)
        ch, cw = tri.shape
        # scale-normalised solve: the Laplacian's 3x3 window sees the same structure at any resolution
        scale = min(1.0, self.max_side / max(ch, cw))
        if self.solve_band_px > 0:
            scale = min(scale, self.solve_band_px / radius)
        if scale < 1.0:
            size = (max(2, round(cw * scale)), max(2, round(ch * scale)))
            small_img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            small_tri = cv2.resize(tri, size, interpolation=cv2.INTER_NEAREST)
            if (small_tri == 1.0).sum() == 0 or (small_tri == 0.0).sum() == 0:
                return mask.astype(np.float32)
            a = self._solve(small_img, small_tri)
            a = cv2.resize(a, (cw, ch), interpolation=cv2.INTER_LINEAR)
        else:
            a = self._solve(img, tri)
        alpha = mask.astype(np.float32)
        box = alpha[y0:y1, x0:x1]
        u = unknown[y0:y1, x0:x1]
        box[u] = np.clip(a[u], 0.0, 1.0)
        return alpha

    def _solve(self, img: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        from pymatting import estimate_alpha_cf

        chatter = io.StringIO()   # pymatting print()s preconditioner warnings: keep them in the log
        with contextlib.redirect_stdout(chatter):
            alpha = estimate_alpha_cf(img, trimap, laplacian_kwargs={"epsilon": self.epsilon})
        if chatter.getvalue().strip():
            log.debug("pymatting: %s", chatter.getvalue().strip())
        return alpha

    def params(self) -> dict:
        return {**super().params(), "max_side": self.max_side, "crop_margin": self.crop_margin,
                "epsilon": self.epsilon, "solve_band_px": self.solve_band_px}
