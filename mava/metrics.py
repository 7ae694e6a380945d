"""Matting metrics with the community's conventions (alpha as float in [0, 1]).

- MAD  = mean |p - g|                                  x 1e3
- MSE  = mean (p - g)^2                                x 1e3
- Grad = sum (|grad p| - |grad g|)^2, gradients by first-order Gaussian derivative filters
         (sigma 1.4) on min-max normalised mattes      / 1e3
- Conn = sum |phi(p) - phi(g)|, Rhemann et al. connectivity with threshold step 0.1  / 1e3
- dtSSD = sqrt(mean(((p_t - p_t-1) - (g_t - g_t-1))^2)) x 1e2   (Erofeev et al.), per frame pair
- MAD over the transition band: MAD restricted to the unknown region of a trimap made from g.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

GRAD_SIGMA = 1.4
CONN_STEP = 0.1


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs gt {g.shape}")
    return p, g


def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = _check(pred, gt)
    return float(np.abs(p - g).mean() * 1e3)


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = _check(pred, gt)
    return float(((p - g) ** 2).mean() * 1e3)


def gaussian_derivative_filters(sigma: float = GRAD_SIGMA, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """The x / y first-order Gaussian derivative kernels (unit L2 norm) of the standard matting eval."""
    half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * epsilon))))
    r = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-r ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    dgauss = -r * gauss / sigma ** 2
    fx = np.outer(gauss, dgauss)  # varies along columns: derivative in x
    fx /= np.sqrt((fx ** 2).sum())
    return fx, fx.T.copy()


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else a


def gradient_magnitude(a: np.ndarray, sigma: float = GRAD_SIGMA) -> np.ndarray:
    fx, fy = gaussian_derivative_filters(sigma)
    gx = cv2.filter2D(a.astype(np.float64), -1, fx, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(a.astype(np.float64), -1, fy, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx ** 2 + gy ** 2)


def grad(pred: np.ndarray, gt: np.ndarray, sigma: float = GRAD_SIGMA) -> float:
    p, g = _check(pred, gt)
    gp = gradient_magnitude(_normalise(p), sigma)
    gg = gradient_magnitude(_normalise(g), sigma)
    return float(((gp - gg) ** 2).sum() / 1e3)


_FOUR = ndimage.generate_binary_structure(2, 1)


def _round_down_map(pred: np.ndarray, gt: np.ndarray, step: float) -> np.ndarray:
    """Per pixel, the highest threshold below which it stays 4-connected to the source region."""
    steps = np.linspace(0.0, 1.0, int(round(1.0 / step)) + 1)
    l_map = np.full(gt.shape, -1.0)
    for i in range(1, len(steps)):
        both = (gt >= steps[i]) & (pred >= steps[i])
        labels, n = ndimage.label(both, structure=_FOUR)
        omega = np.zeros(gt.shape, bool)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            omega = labels == (int(np.argmax(sizes)) + 1)
        l_map[(l_map == -1) & ~omega] = steps[i - 1]
    l_map[l_map == -1] = 1.0
    return l_map


def conn(pred: np.ndarray, gt: np.ndarray, step: float = CONN_STEP) -> float:
    p, g = _check(pred, gt)
    l_map = _round_down_map(p, g, step)
    dp, dg = p - l_map, g - l_map
    phi_p = 1 - dp * (dp >= 0.15)
    phi_g = 1 - dg * (dg >= 0.15)
    return float(np.abs(phi_p - phi_g).sum() / 1e3)


def dtssd_pairs(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """dtSSD x1e2 of each consecutive frame pair (t-1, t) of [T,H,W] mattes: an array of T-1 values."""
    p, g = _check(pred, gt)
    if p.ndim != 3:
        raise ValueError("dtSSD needs [T,H,W] mattes")
    d = np.diff(p, axis=0) - np.diff(g, axis=0)
    return np.sqrt((d ** 2).reshape(len(d), -1).mean(axis=1)) * 1e2


def dtssd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean dtSSD x1e2 over the frame pairs of a clip (NaN for a single frame)."""
    v = dtssd_pairs(pred, gt)
    return float(v.mean()) if len(v) else float("nan")


def transition_band(gt: np.ndarray, radius: int = 10) -> np.ndarray:
    """Unknown region of a trimap from gt: dilate(gt > 0) minus erode(gt >= 1), disk of `radius`."""
    g = np.asarray(gt, np.float64)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    outer = cv2.dilate((g > 0).astype(np.uint8), k) > 0
    inner = cv2.erode((g >= 1).astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE) > 0
    return outer & ~inner


def mad_band(pred: np.ndarray, gt: np.ndarray, radius: int = 10) -> float:
    """MAD x1e3 over the transition band of gt (NaN when the band is empty)."""
    p, g = _check(pred, gt)
    band = transition_band(g, radius)
    return float(np.abs(p - g)[band].mean() * 1e3) if band.any() else float("nan")


FRAME_METRICS = ("mad", "mse", "grad", "conn", "mad_band")
CLIP_METRICS = FRAME_METRICS + ("dtssd",)


@dataclass
class ClipScores:
    """Metrics of one clip: per-frame metrics averaged over frames, and dtSSD over frame pairs."""

    mad: float
    mse: float
    grad: float
    conn: float
    mad_band: float
    dtssd: float
    frames: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def frame_scores(pred: np.ndarray, gt: np.ndarray, band_radius: int = 10) -> dict[str, float]:
    return {
        "mad": mad(pred, gt), "mse": mse(pred, gt), "grad": grad(pred, gt), "conn": conn(pred, gt),
        "mad_band": mad_band(pred, gt, band_radius),
    }


def clip_scores(pred: np.ndarray, gt: np.ndarray, band_radius: int = 10) -> ClipScores:
    """Score [T,H,W] predicted mattes against [T,H,W] ground truth."""
    p, g = _check(pred, gt)
    per = [frame_scores(p[t], g[t], band_radius) for t in range(len(p))]
    avg = {k: float(np.nanmean([f[k] for f in per])) if any(np.isfinite(f[k]) for f in per) else float("nan")
           for k in FRAME_METRICS}
    return ClipScores(**avg, dtssd=dtssd(p, g), frames=len(p))
