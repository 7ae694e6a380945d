"""Matte quality of the CPU matters against ground truth: MAD x1e3, Grad, seconds per megapixel-frame.

For clean masks (GT alpha > 0.5) and masks degraded by 8x downsampling (area-downsample, bilinear
upsample, threshold), on synthetic clips with ground-truth alpha. The ratio MAD(matter)/MAD(mask) is
the figure that matters: ``guided`` and ``closed-form`` must stay at or below 0.8.

The clips come from ``local_synthetic_clip`` below (soft-edged moving shapes over texture): the
project's synthetic SA-V split generator (pipeline/synth.py) had not landed on main when this was
written, and it does not need to ship ground-truth alpha for this benchmark to stay self-contained.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from models.base import MatterConfig, build_matter

log = logging.getLogger(__name__)

MATTERS = ("mask", "guided", "closed-form")


# ------------------------------------------------------------------------------ synthetic clips


def _texture(rng: np.random.Generator, h: int, w: int, scales=(4, 16, 48)) -> np.ndarray:
    """Smooth colour texture in [0,1], float32 [h,w,3]: sum of upsampled noise at a few scales."""
    tex = np.zeros((h, w, 3), np.float32)
    for s in scales:
        small = rng.random((max(2, h // s), max(2, w // s), 3)).astype(np.float32)
        tex += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / len(scales)
    return np.clip(tex, 0, 1)


def local_synthetic_clip(seed: int, t: int = 4, h: int = 240, w: int = 320,
                         edge_px: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8[T,H,W,3], alpha float32[T,H,W]): a textured blob with soft edges moving over texture.

    The blob is a wobbly ellipse; alpha ramps linearly over ``edge_px`` pixels across its boundary
    (signed distance), frames are the exact composite alpha*F + (1-alpha)*B.
    """
    rng = np.random.default_rng(seed)
    bg = _texture(rng, h, w) * 0.6 + 0.2 * rng.random(3).astype(np.float32)
    fg_tex = _texture(rng, h, w, scales=(8, 32))
    fg_col = rng.random(3).astype(np.float32)
    fg = np.clip(0.5 * fg_tex + 0.5 * fg_col, 0, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.15, 0.3), w * rng.uniform(0.15, 0.3)
    vy, vx = rng.uniform(-3, 3, 2)
    k, amp, phase = rng.integers(3, 7), rng.uniform(0.05, 0.15), rng.uniform(0, 2 * np.pi)
    frames = np.empty((t, h, w, 3), np.uint8)
    alphas = np.empty((t, h, w), np.float32)
    for i in range(t):
        dy, dx = (yy - cy - vy * i) / ry, (xx - cx - vx * i) / rx
        r = np.sqrt(dy**2 + dx**2)
        theta = np.arctan2(dy, dx)
        boundary = 1.0 + amp * np.sin(k * theta + phase + 0.2 * i)
        signed_px = (boundary - r) * min(ry, rx)          # approx. distance inside the boundary, px
        a = np.clip(signed_px / edge_px + 0.5, 0.0, 1.0).astype(np.float32)
        img = a[..., None] * fg + (1 - a[..., None]) * bg
        frames[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        alphas[i] = a
    return frames, alphas


# ------------------------------------------------------------------------------ masks and metrics


def clean_masks(alpha: np.ndarray) -> np.ndarray:
    return alpha > 0.5


def degraded_masks(alpha: np.ndarray, factor: int = 8) -> np.ndarray:
    """Masks as from a coarse segmenter: area-downsample by ``factor``, bilinear upsample, threshold."""
    out = np.empty(alpha.shape, bool)
    h, w = alpha.shape[1:]
    for i, a in enumerate(alpha):
        m = (a > 0.5).astype(np.float32)
        small = cv2.resize(m, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return out


def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute difference (alpha in [0,1])."""
    return float(np.abs(pred.astype(np.float64) - gt).mean())


def grad_error(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4) -> float:
    """Gradient error (matting benchmark style): sum of squared gradient-magnitude differences / 1e3 per frame."""
    total = 0.0
    for p, g in zip(pred, gt):
        def gm(x: np.ndarray) -> np.ndarray:
            x = cv2.GaussianBlur(x.astype(np.float64), (0, 0), sigma)
            gx, gy = cv2.Sobel(x, cv2.CV_64F, 1, 0), cv2.Sobel(x, cv2.CV_64F, 0, 1)
            return np.sqrt(gx**2 + gy**2)
        total += float(((gm(p) - gm(g)) ** 2).sum()) / 1e3
    return total / len(pred)


@dataclass
class Row:
    masks: str
    matter: str
    mad_x1e3: float
    grad: float
    s_per_mpf: float      # seconds per megapixel-frame
    ratio_to_mask: float = float("nan")


def evaluate(clips: list[tuple[np.ndarray, np.ndarray]], matters=MATTERS) -> list[Row]:
    """Rows for every (mask kind, matter): metrics pooled over the clips (mean over frames)."""
    built = {name: build_matter(name, MatterConfig()) for name in matters}
    # warm-up (pymatting JIT-compiles on first use): keep it out of the timings
    f0, a0 = clips[0]
    for m in built.values():
        m.refine(f0[:1], clean_masks(a0[:1]))
    rows: list[Row] = []
    for kind, make in (("clean", clean_masks), ("8x-degraded", degraded_masks)):
        base_mad = None
        for name, matter in built.items():
            mads, grads, secs, mpf = [], [], 0.0, 0.0
            for frames, alpha in clips:
                masks = make(alpha)
                t0 = time.perf_counter()
                pred = matter.refine(frames, masks)
                secs += time.perf_counter() - t0
                mpf += alpha.size / 1e6
                mads.append(mad(pred, alpha))
                grads.append(grad_error(pred, alpha))
            row = Row(kind, name, 1e3 * float(np.mean(mads)), float(np.mean(grads)), secs / mpf)
            if name == "mask":
                base_mad = row.mad_x1e3
            if base_mad:
                row.ratio_to_mask = row.mad_x1e3 / base_mad
            rows.append(row)
    return rows


def make_clips(n: int, t: int, h: int, w: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return [local_synthetic_clip(seed + i, t=t, h=h, w=w) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=6, help="number of synthetic clips")
    p.add_argument("--frames", type=int, default=4, help="frames per clip")
    p.add_argument("--height", type=int, default=480, help="frame height")
    p.add_argument("--width", type=int, default=848, help="frame width")
    p.add_argument("--seed", type=int, default=0, help="seed of the first clip")
    p.add_argument("--max-ratio", type=float, default=0.8,
                   help="exit 1 when MAD(guided|closed-form) > this x MAD(mask)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    clips = make_clips(args.clips, args.frames, args.height, args.width, args.seed)
    rows = evaluate(clips)
    print(f"matter quality: {args.clips} local synthetic clips x {args.frames} frames at "
          f"{args.width}x{args.height} (soft edges, GT alpha)")
    print(f"{'masks':<12} {'matter':<12} {'MAD x1e3':>9} {'Grad':>9} {'s/MP-frame':>11} {'MAD/mask':>9}")
    ok = True
    for r in rows:
        print(f"{r.masks:<12} {r.matter:<12} {r.mad_x1e3:9.2f} {r.grad:9.2f} {r.s_per_mpf:11.3f} {r.ratio_to_mask:9.3f}")
        if r.matter != "mask" and not r.ratio_to_mask <= args.max_ratio:
            ok = False
    print(f"MAD(guided), MAD(closed-form) <= {args.max_ratio} x MAD(mask): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
