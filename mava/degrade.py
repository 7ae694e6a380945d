"""Mask degradations: coarse masks a matter (or a training run) may be given instead of clean ones."""

from __future__ import annotations

import cv2
import numpy as np


def _as_u8(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    return (m > 0.5 if m.dtype.kind == "f" else m > 0).astype(np.uint8)


def downsample_upsample(mask: np.ndarray, factor: int, threshold: float = 0.5) -> np.ndarray:
    """Area-downsample by `factor`, bilinear-upsample back to the input size, threshold: a blocky mask."""
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
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Shrink the mask by a disk of `radius` pixels."""
    m = _as_u8(mask)
    return cv2.erode(m, _disk(radius)).astype(bool) if radius > 0 else m.astype(bool)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow the mask by a disk of `radius` pixels."""
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
