"""Mask degradations: coarse masks a matter (or a training run) may be given instead of clean ones.

OpenCV is imported in the functions that use it: `python -m mava` starts without it."""

from __future__ import annotations

import numpy as np


def _as_u8(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    return (m > 0.5 if m.dtype.kind == "f" else m > 0).astype(np.uint8)


def downsample_upsample(mask: np.ndarray, factor: int, threshold: float = 0.5) -> np.ndarray:
    """Area-downsample by `factor`, bilinear-upsample back to the input size, threshold: a blocky mask."""
    import cv2
    if factor < 1:
        raise ValueError("factor must be >= 1")
    m = _as_u8(mask).astype(np.float32)
    h, w = m.shape
    small = cv2.resize(m, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return up >= threshold


def simplify_polygons(mask: np.ndarray, epsilon: float = 4.0) -> np.ndarray:
    """Redraw the mask from its contours simplified by Douglas-Peucker with tolerance `epsilon` px.

    Holes are kept (contour hierarchy), so a ring stays a ring.
    """
    import cv2
    m = _as_u8(mask)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(m)
    if not contours:
        return out.astype(bool)
    simplified = [cv2.approxPolyDP(c, float(epsilon), True) for c in contours]
    # Outer contours (no parent) filled with 1, holes (with a parent) with 0, outer first.
    parents = hierarchy[0][:, 3]
    for i in np.flatnonzero(parents < 0):
        cv2.fillPoly(out, [simplified[i]], 1)
    for i in np.flatnonzero(parents >= 0):
        cv2.fillPoly(out, [simplified[i]], 0)
    return out.astype(bool)


def _disk(radius: int) -> np.ndarray:
    import cv2
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Shrink the mask by a disk of `radius` pixels."""
    import cv2
    m = _as_u8(mask)
    return cv2.erode(m, _disk(radius)).astype(bool) if radius > 0 else m.astype(bool)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow the mask by a disk of `radius` pixels."""
    import cv2
    m = _as_u8(mask)
    return cv2.dilate(m, _disk(radius)).astype(bool) if radius > 0 else m.astype(bool)


#: Named degradations (name -> function of one 2-D mask), the set used by eval and training.
DEGRADATIONS = {
    "down8": lambda m: downsample_upsample(m, 8),
    "down32": lambda m: downsample_upsample(m, 32),
    "polygon": lambda m: simplify_polygons(m, 4.0),
    "erode5": lambda m: erode(m, 5),
    "dilate5": lambda m: dilate(m, 5),
}


def degrade_video(masks: np.ndarray, name: str) -> np.ndarray:
    """Apply the named degradation to every frame of bool[T,H,W] masks."""
    fn = DEGRADATIONS[name]
    return np.stack([fn(m) for m in masks]) if len(masks) else np.asarray(masks, bool)


# --- alpha damages: what a matter gets wrong, at graded strengths (for validating QC scores) ----------
#
# Each damage maps GT alpha float[T,H,W] in [0,1] (with its input masks bool[T,H,W]) and a strength in
# [0, 1] (0: unchanged) to a damaged alpha. Sizes scale with the object (u = sqrt of its mean mask area
# in pixels), so a strength means the same on a small and a large object. Random choices come from
# ``seed`` alone and are drawn the same way at every strength, so a damage grows monotonically with it.

ALPHA_DAMAGES = ("blur", "erode", "dilate", "holes", "leak", "veil", "flicker", "seam")
#: size of each damage at strength 1, in units of the object scale u (blur: sigma; erode/dilate: disk
#: radius; flicker/seam: largest shift) or as a fraction (holes/leak: of the mask area; veil: opacity lost)
DAMAGE_SCALE = {"blur": 0.25, "erode": 0.4, "dilate": 0.4, "holes": 0.4, "leak": 0.4, "veil": 0.8,
                "flicker": 0.15, "seam": 0.15}


def object_scale(masks: np.ndarray) -> float:
    """u = sqrt(mean mask area over the frames where the object is visible), in pixels (0: never visible)."""
    areas = np.asarray(masks, bool).reshape(len(masks), -1).sum(axis=1)
    areas = areas[areas > 0]
    return float(np.sqrt(areas.mean())) if len(areas) else 0.0


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    import cv2
    if sigma <= 0:
        return alpha
    return np.stack([cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) for a in alpha])


def _grey_morph(alpha: np.ndarray, radius: float, op) -> np.ndarray:
    """Grey-level erosion/dilation of each frame by a disk; fractional radii blend the two nearest disks."""
    import cv2
    if radius <= 0:
        return alpha
    lo = int(np.floor(radius))
    frac = radius - lo

    def morph(r: int) -> np.ndarray:
        return np.stack([op(a, _disk(r), borderType=cv2.BORDER_REPLICATE) for a in alpha]) if r > 0 else alpha

    a_lo = morph(lo)
    return a_lo if frac == 0 else (1 - frac) * a_lo + frac * morph(lo + 1)


def _blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """A soft disk (1 inside radius r, smooth falloff over r/3) as float32[H,W]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((r - d) / max(1.0, r / 3) + 0.5, 0, 1).astype(np.float32)


def _blobs(masks: np.ndarray, region: np.ndarray, strength: float, u: float, rng: np.random.Generator,
           max_area: float = 0.4) -> np.ndarray:
    """float32[T,H,W] union of soft disks of radius 0.15u centred in ``region`` (per frame), covering about
    ``strength * max_area`` of each frame's mask area. The same candidate centres at every strength."""
    t, h, w = masks.shape
    r = max(1.5, 0.15 * u)
    out = np.zeros((t, h, w), np.float32)
    for i in range(t):
        cand = np.flatnonzero(region[i])
        order = rng.permutation(len(cand))[:64] if len(cand) else []  # drawn at every strength
        target = strength * max_area * masks[i].sum()
        for j in order:
            if out[i].sum() >= target or target <= 0:
                break
            cy, cx = divmod(int(cand[j]), w)
            out[i] = np.maximum(out[i], _blob(h, w, cy, cx, r))
    return out


def _smooth_field(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``scale`` pixels wide."""
    import cv2
    h, w = shape
    small = rng.random((max(2, int(h / scale) + 2), max(2, int(w / scale) + 2))).astype(np.float32)
    f = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(f.min()), float(f.max())
    return (f - lo) / (hi - lo) if hi > lo else np.full(shape, 0.5, np.float32)


def _shift(a: np.ndarray, dy: float, dx: float) -> np.ndarray:
    import cv2
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(a, m, (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def damage_alpha(alpha: np.ndarray, masks: np.ndarray, name: str, strength: float, seed: int = 0) -> np.ndarray:
    """``alpha`` float[T,H,W] in [0,1] damaged by ``name`` (one of ALPHA_DAMAGES) at ``strength`` in [0,1].

    - blur: Gaussian blur, sigma 0.25u*s;  erode / dilate: grey erosion / dilation by a disk of 0.25u*s;
    - holes: soft disks (radius 0.15u) cut out inside the mask, about 0.4*s of its area;
    - leak: soft disks of alpha 1 outside the dilated mask, about 0.4*s of the mask area;
    - veil: smoke/glass-like transparency inside the object: alpha x (1 - 0.8*s*smooth noise);
    - flicker: each frame shifted (up to 0.15u*s px) and dimmed (up to 30%*s) independently;
    - seam: the whole clip shifted and dimmed once, as a window that disagrees with its neighbours.
    """
    import cv2
    if name not in ALPHA_DAMAGES:
        raise ValueError(f"unknown alpha damage {name!r}; choose one of {ALPHA_DAMAGES}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    a = np.asarray(alpha, np.float32)
    m = np.asarray(masks, bool)
    if a.ndim != 3 or m.shape != a.shape:
        raise ValueError(f"alpha {a.shape} and masks {m.shape} must both be [T,H,W]")
    u = object_scale(m)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, ALPHA_DAMAGES.index(name)])
    if strength == 0 or u == 0:
        return a.copy()
    s = float(strength)
    k = DAMAGE_SCALE[name] * s
    if name == "blur":
        out = _blur(a, k * u)
    elif name == "erode":
        out = _grey_morph(a, k * u, cv2.erode)
    elif name == "dilate":
        out = _grey_morph(a, k * u, cv2.dilate)
    elif name == "holes":
        inside = np.stack([erode(x, max(1, int(0.15 * u))) for x in m])
        out = a * (1 - _blobs(m, inside, s, u, rng, DAMAGE_SCALE[name]))
    elif name == "leak":
        far = ~np.stack([dilate(x, max(2, int(0.4 * u))) for x in m])
        out = np.maximum(a, _blobs(m, far, s, u, rng, DAMAGE_SCALE[name]))
    elif name == "veil":
        field = np.stack([_smooth_field(a.shape[1:], 0.5 * u, rng)] * len(a))
        out = a * (1 - k * (0.25 + 0.75 * field))
    elif name == "flicker":
        moves = rng.uniform(-1, 1, (len(a), 2)) * k * u
        gains = 1 - 0.3 * s * rng.random(len(a))
        out = np.stack([_shift(x, dy, dx) * g for x, (dy, dx), g in zip(a, moves, gains)])
    else:  # seam
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = k * u * np.sin(ang), k * u * np.cos(ang)
        gain = 1 - 0.3 * s * (0.5 + 0.5 * rng.random())
        out = np.stack([_shift(x, dy, dx) * gain for x in a])
    return np.clip(out, 0, 1).astype(np.float32)
