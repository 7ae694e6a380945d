"""Do the QC scores rank the damage they target? ``python -m benchmarks.qc_validation``.

Ground-truth alpha clips come from ``pipeline.synth`` (rendered in memory: feathered ellipse, hair-like
strands, motion-blurred box), cut into windows of 12 annotated frames as the job cuts masklets (the
input mask is the GT binarised, as the synthetic SA-V JSON holds it). Each window is damaged with
``mava.degrade.damage_alpha`` at graded strengths, and each score is compared with the true error of
the damaged matte against the ground truth:

- spatial damages (blur, erode, dilate, holes, leak, veil): MAD;
- temporal damages (flicker; seam, where the second window of a masklet disagrees with the first):
  dtSSD (for the seam: dtSSD of the seam's frame pair in the stitched sequence; for ``overlap_mad``
  with overlapping windows: the two windows' MAD on their shared frames).

The true errors are taken per object pixel (MAD: sum |p - g| / |M|; dtSSD: sqrt(sum d^2 / |dilate(M)|)
per frame pair) because the scores are per object pixel: a small object's MAD over the whole frame is
small whatever the damage. Spearman is reported pooled over all clips and strengths (the claim that
matters: a higher score means a worse matte, across content) and within each clip (median, min), with
the pooled figure against the plain whole-frame metric for reference. Required (exit 1 otherwise):
within every clip, Spearman >= 0.8 between each score and the true error of the damage it targets
(the score ranks that damage's graded strengths), and every undamaged window passes the default
thresholds. The pooled figures are lower where legitimately soft content (motion blur, hair) gives a
score a baseline that small damage on crisp content does not reach; they are printed, not required.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from mava import degrade, metrics, qc, schema
from mava.schema import Col
from pipeline.segments import plan_windows
from pipeline.synth import RATIO, make_specs, render

STRENGTHS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)
REQUIRED = 0.8

#: damage -> (target score, error kind); a negative score direction for stability (lower = worse)
TARGETS: dict[str, tuple[str, str]] = {
    "blur": (Col.STABILITY, "mad"),
    "erode": (Col.HOLE, "mad"),
    "holes": (Col.HOLE, "mad"),
    "dilate": (Col.LEAK, "mad"),
    "leak": (Col.LEAK, "mad"),
    "veil": (Col.OFF_BAND, "mad"),
    "flicker": (Col.FLICKER, "dtssd"),
    "seam": (Col.SEAM_JUMP, "seam"),
    "seam ": (Col.OVERLAP_MAD, "overlap"),   # the seam damage on overlapping windows (stride 8)
}


@dataclass
class Clip:
    name: str
    alpha: np.ndarray      # float32[T,H,W] ground truth over the object's visible span
    masks: np.ndarray      # bool[T,H,W]: the GT binarised (the synthetic SA-V masks)


def gt_clips(videos: int, frames: int, sizes: list[str], seed: int) -> list[Clip]:
    """Every object's GT alpha over its visible span at the annotated rate (every 4th video frame)."""
    out = []
    for spec in make_specs(videos, frames, seed, sizes):
        alphas = np.stack([a for t, (_, a) in enumerate(render(spec)) if t % RATIO == 0]).astype(np.float32)
        for k in range(alphas.shape[1]):
            a = np.ascontiguousarray(alphas[:, k])
            m = a >= 127.5 / 255   # pipeline.synth.gt_mask: 8-bit alpha >= 128
            vis = np.flatnonzero(m.reshape(len(m), -1).any(axis=1))
            if len(vis) >= 2:
                sl = slice(vis[0], vis[-1] + 1)
                out.append(Clip(f"{spec.video_id}/{k:03d} {spec.width}x{spec.height}", a[sl], m[sl]))
    return out


def windows(clip: Clip, length: int = 12, stride: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of the windows the job plans over the clip's span."""
    return [(s, n) for s, n, _ in plan_windows(0, len(clip.alpha) - 1, length, stride or length)]


# --- true errors per object pixel -------------------------------------------------------------------


def mad_obj(p: np.ndarray, g: np.ndarray, m: np.ndarray) -> float:
    return float(np.abs(p.astype(np.float64) - g).sum() / max(1, int(m.sum())))


def dtssd_obj_pairs(p: np.ndarray, g: np.ndarray, m: np.ndarray) -> np.ndarray:
    r = qc.band_radius(m)
    region = qc.dilate(m[1:] | m[:-1], r).reshape(len(m) - 1, -1).sum(axis=1)
    d = np.diff(p.astype(np.float64), axis=0) - np.diff(g.astype(np.float64), axis=0)
    v = np.sqrt((d ** 2).reshape(len(d), -1).sum(axis=1) / np.maximum(region, 1))
    return np.where(region > 0, v, np.nan)


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


# --- one damage over all clips ----------------------------------------------------------------------


@dataclass
class Point:
    clip: str
    strength: float
    score: float | None
    error: float          # per object pixel
    plain: float          # the whole-frame metric (mava.metrics, x1e3 MAD / x1e2 dtSSD)
    verdict: str


def sample_points(clips: list[Clip], damage: str, score: str, kind: str) -> list[Point]:
    """The first window of every clip, damaged at each strength."""
    pts = []
    for c in clips:
        s0, n = windows(c)[0]
        g, m = c.alpha[s0:s0 + n], c.masks[s0:s0 + n]
        for s in STRENGTHS:
            p = degrade.damage_alpha(g, m, damage, s, seed=_seed(c.name, s0))
            sc = qc.sample_scores(p, m)
            if kind == "dtssd":
                err, plain = float(np.nanmean(dtssd_obj_pairs(p, g, m))), metrics.dtssd(p, g)
            else:
                err, plain = mad_obj(p, g, m), metrics.mad(p, g)
            pts.append(Point(c.name, s, sc[score], err, plain, qc.verdict(sc)[0]))
    return pts


def window_points(clips: list[Clip], score: str, kind: str, stride: int | None) -> list[Point]:
    """Masklets of two or more windows; every window gets the seam damage (its own seed, so neighbours
    disagree); the score and error are those of the second window against the first."""
    pts = []
    for c in clips:
        ws = windows(c, 12, stride)
        if len(ws) < 2:
            continue
        (s1, n1), (s2, n2) = ws[:2]
        for s in STRENGTHS:
            wins, damaged = [], {}
            for st, n in ws[:2]:
                p = degrade.damage_alpha(c.alpha[st:st + n], c.masks[st:st + n], "seam", s, seed=_seed(c.name, st))
                damaged[st] = p
                wins.append(qc.Window(str(st), list(range(st, st + n)), p, c.masks[st:st + n]))
            sc = qc.window_scores(wins)[str(s2)]
            row = qc.sample_scores(damaged[s2], c.masks[s2:s2 + n2]) | sc | {Col.STATUS: schema.STATUS_OK}
            if kind == "seam":
                # the seam pair of the first-wins join: last frame of window 1 -> first new frame of window 2
                f = s1 + n1                  # first frame window 1 does not cover
                g = c.alpha[f - 1:f + 1]
                p = np.stack([damaged[s1][f - 1 - s1], damaged[s2][f - s2]])
                m = c.masks[f - 1:f + 1]
                err = float(dtssd_obj_pairs(p, g, m)[0])
                plain = float(metrics.dtssd(p, g))
            else:  # overlap: both windows' error on the shared frames
                shared = list(range(s2, s1 + n1))
                g, m = c.alpha[shared], c.masks[shared]
                pa, pb = damaged[s1][[f - s1 for f in shared]], damaged[s2][[f - s2 for f in shared]]
                err = (mad_obj(pa, g, m) + mad_obj(pb, g, m)) / 2
                plain = (metrics.mad(pa, g) + metrics.mad(pb, g)) / 2
            pts.append(Point(c.name, s, sc[score], err, plain, qc.verdict(row)[0]))
    return pts


def spearman(pts: list[Point], score: str, attr: str = "error") -> float:
    sign = -1.0 if score in qc.Thresholds.LOWER_IS_WORSE else 1.0
    xs = [sign * p.score for p in pts if p.score is not None]
    ys = [getattr(p, attr) for p in pts if p.score is not None]
    return float(spearmanr(xs, ys)[0]) if len(set(xs)) > 1 else float("nan")


def within(pts: list[Point], score: str) -> tuple[float, float]:
    per = [spearman([p for p in pts if p.clip == c], score) for c in sorted({p.clip for p in pts})]
    per = [v for v in per if np.isfinite(v)]
    return (float(np.median(per)), float(np.min(per))) if per else (float("nan"), float("nan"))


def clean_verdicts(clips: list[Clip]) -> dict[str, list[str]]:
    """Verdicts (with the scores that set them) of every undamaged window, default and overlapping tiling."""
    out: dict[str, list[str]] = {v: [] for v in qc.VERDICTS}
    for stride in (None, 8):
        for c in clips:
            wins = [qc.Window(str(st), list(range(st, st + n)), c.alpha[st:st + n], c.masks[st:st + n])
                    for st, n in windows(c, 12, stride)]
            cross = qc.window_scores(wins)
            for w in wins:
                row = qc.sample_scores(w.alpha, w.masks) | cross[w.key] | {Col.STATUS: schema.STATUS_OK}
                v, why = qc.verdict(row)
                out[v].append(f"{c.name} window {w.key} stride {stride or 12}: {why}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.qc_validation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4, help="synthetic videos (3 objects each)")
    p.add_argument("--frames", type=int, default=104, help="video frames per video (104: 26 annotated, 3 windows)")
    p.add_argument("--sizes", nargs="+", default=["160x96", "96x160", "256x144", "384x216"], help="WxH, cycled")
    p.add_argument("--seed", type=int, default=3, help="synthetic split seed")
    a = p.parse_args(argv)
    clips = gt_clips(a.videos, a.frames, a.sizes, a.seed)
    print(f"{len(clips)} ground-truth clips ({a.videos} videos x objects, sizes {' '.join(a.sizes)}), "
          f"strengths {', '.join(f'{s:g}' for s in STRENGTHS)}")
    head = ("| damage | score vs true error | Spearman within clip (median / min) | pooled, error per object px | "
            "pooled, plain metric | non-pass at strength " + " / ".join(f"{x:g}" for x in STRENGTHS) + " |")
    lines = [head, "|" + " --- |" * 6]
    ok = True
    for damage, (score, kind) in TARGETS.items():
        if kind in ("seam", "overlap"):
            pts = window_points(clips, score, kind, 8 if kind == "overlap" else None)
        else:
            pts = sample_points(clips, damage, score, kind)
        rho, plain = spearman(pts, score), spearman(pts, score, "plain")
        med, lo = within(pts, score)
        bad = [np.mean([q.verdict != schema.QC_PASS for q in pts if q.strength == s]) for s in STRENGTHS]
        ok &= lo >= REQUIRED
        name = damage.strip() + (" (stride 8)" if kind == "overlap" else "")
        err = {"mad": "MAD", "dtssd": "dtSSD", "seam": "seam-pair dtSSD", "overlap": "MAD on shared frames"}[kind]
        lines.append(f"| {name} | {score} vs {err} | **{med:.3f} / {lo:.3f}** | {rho:.3f} | {plain:.3f} | "
                     + " / ".join(f"{b:.0%}" for b in bad) + " |")
    print("\n".join(lines))
    clean = clean_verdicts(clips)
    n = sum(len(v) for v in clean.values())
    print(f"undamaged windows: {len(clean[schema.QC_PASS])} pass, {len(clean[schema.QC_WARN])} warn, "
          f"{len(clean[schema.QC_FAIL])} fail of {n} (default thresholds; default and stride-8 tiling)")
    for v in (schema.QC_WARN, schema.QC_FAIL):
        for line in clean[v][:10]:
            print(f"  {v}: {line}")
    ok &= len(clean[schema.QC_PASS]) == n
    print("PASS" if ok else f"FAIL: a within-clip Spearman below {REQUIRED} or an undamaged window not passing")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
