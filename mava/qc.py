"""Quality control of pseudo-labels: how far each matte can be trusted, from the matte, its input mask
and the other windows of its masklet; and a pass/warn/fail verdict from documented thresholds.

Scores of one sample (alpha a in [0,1] and input mask M, summed over the sample's frames; r is the
band half-width, :func:`band_radius`, so the band ``dilate(M, r) - erode(M, r)`` is where a soft edge
may legitimately lie):

- ``stability`` = |a > 0.75| / |a > 0.25|: how much of the matte is decided (SA-1B's stability score
  on alpha); low for a blurred or washed-out matte. 1 when nothing exceeds 0.25.
- ``leak`` = sum a * (1 - dilate(M, r)) / sum a: the share of the matte lying away from the mask.
- ``hole`` = |erode(M, r) and a < 0.5| / |erode(M, r)|: the share of the mask's core left open.
- ``off_band`` = sum over semi-transparent pixels (0.02 < a < 0.98) off the edge band of (1 - a inside M,
  a outside M), / |M|: partial transparency where the matte should be decided (smoke, glass, a veil
  over the object, soft leaks), per mask pixel.
- ``flicker``: temporal change of alpha the mask does not explain, a dtSSD against the mask per object
  pixel: the mean over frame pairs of :func:`change_series` (the earlier frame moved by the mask
  centroid's motion, the residual (a_t - W a_t-1) - (M_t - W M_t-1) blurred by sigma SMOOTH * r, RMS over
  |dilate(M_t or M_t-1, r)|).

Scores of a window against the earlier windows of its masklet (stored on the later window):

- ``overlap_mad``: where windows share annotated frames, each shared frame was matted twice; the
  mean over those frames of sum |a - a'| / |dilate(M, r)| (the answers' disagreement per object pixel).
- ``seam_jump``: the change across the window's seam (the pair ending at its first new frame, the
  earlier frame from the earlier window) against the median change inside the two windows, changes
  measured as in ``flicker``: c_seam / max(median c_inside, SEAM_FLOOR).

Undefined scores (no mask core, no frame pair, no earlier window) are null and never set a verdict.
The verdict of a row is ``fail`` when a score crosses its fail threshold, else ``warn`` when one
crosses its warn threshold, else ``pass``; ``qc_reason`` names the scores that crossed (worst first).

OpenCV is imported in the functions that use it: `python -m mava` starts without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Mapping

import numpy as np

from mava import schema
from mava.schema import Col

# --- constants of the scores ----------------------------------------------------------------------

BAND_FRAC = 0.15       # band half-width: this fraction of sqrt(mean mask area) ...
BAND_MIN_PX = 2        # ... at least this many pixels ...
BAND_MAX_FRAC = 0.05   # ... and at most this fraction of the frame's long side
STABLE_LO, STABLE_HI = 0.25, 0.75
HOLE_ALPHA = 0.5
SMOOTH = 0.4          # flicker: sigma of the blur, in band radii
SEAM_FLOOR = 0.02      # changes below this (RMS per object pixel) count as "no change" in seam_jump

SAMPLE_SCORES = (Col.STABILITY, Col.LEAK, Col.HOLE, Col.OFF_BAND, Col.FLICKER)
WINDOW_SCORES = (Col.OVERLAP_MAD, Col.SEAM_JUMP)
SCORES = SAMPLE_SCORES + WINDOW_SCORES
VERDICTS = (schema.QC_PASS, schema.QC_WARN, schema.QC_FAIL)


def as_float_alpha(alpha: np.ndarray) -> np.ndarray:
    """float32 alpha in [0,1] from uint8 (0..255) or float."""
    a = np.asarray(alpha)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def band_radius(masks: np.ndarray) -> int:
    """Half-width r of the edge band of a clip's masks bool[T,H,W], in pixels: BAND_FRAC * sqrt(mean mask
    area over the frames that have one), at least BAND_MIN_PX, at most BAND_MAX_FRAC of the long side."""
    m = np.asarray(masks, bool)
    areas = m.reshape(len(m), -1).sum(axis=1)
    areas = areas[areas > 0]
    u = float(np.sqrt(areas.mean())) if len(areas) else 0.0
    r = max(BAND_MIN_PX, round(BAND_FRAC * u))
    return int(max(1, min(r, round(BAND_MAX_FRAC * max(m.shape[1:])))))


def _outside_distance(masks: np.ndarray) -> np.ndarray:
    """float32[T,H,W]: each pixel's Euclidean distance to the nearest mask pixel of its frame (0 inside;
    large in a frame without mask)."""
    import cv2
    out = np.empty(masks.shape, np.float32)
    for t, m in enumerate(masks):
        out[t] = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5) if m.any() else np.inf
    return out


def dilate(masks: np.ndarray, radius: float) -> np.ndarray:
    """bool[T,H,W]: pixels within ``radius`` of the mask (a disk dilation; O(pixels) at any radius)."""
    return _outside_distance(np.asarray(masks, bool)) <= radius


def erode(masks: np.ndarray, radius: float) -> np.ndarray:
    """bool[T,H,W]: mask pixels farther than ``radius`` from every non-mask pixel of the frame (pixels
    beyond the frame count as mask, so an object cut by the border keeps its core)."""
    import cv2
    m = np.asarray(masks, bool)
    out = np.zeros(m.shape, bool)
    for t, x in enumerate(m):
        if x.all():
            out[t] = True
        elif x.any():
            out[t] = cv2.distanceTransform(x.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5) > radius
    return out


def _centroid(m: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(m)
    return (float(ys.mean()), float(xs.mean())) if len(ys) else None


def _shift(x: np.ndarray, dy: float, dx: float) -> np.ndarray:
    import cv2
    mat = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(x, mat, (x.shape[1], x.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def change_series(alpha: np.ndarray, masks: np.ndarray, radius: int | None = None,
                  near: np.ndarray | None = None) -> np.ndarray:
    """Per consecutive frame pair, the RMS per object pixel of the alpha change the mask does not
    explain; NaN where both masks are empty. float64[T-1]. ``near``: dilate(masks, r) when known.

    The earlier frame's alpha and mask are moved by the mask's centroid motion (the object's motion),
    the residual d = (a_t - moved a_t-1) - (M_t - moved M_t-1) is blurred by a Gaussian of sigma
    SMOOTH * r (a soft and a hard edge that deform alike move the same alpha mass) and measured as
    sqrt(sum d^2 / |dilate(M_t or M_t-1, r)|). A wide blur is computed on a grid coarser by up to a
    third of its sigma (area-averaged first), where it is as smooth."""
    import cv2
    a = as_float_alpha(alpha)
    m = np.asarray(masks, bool)
    if len(a) < 2:
        return np.zeros(0)
    r = band_radius(m) if radius is None else radius
    near = dilate(m, r) if near is None else near
    region = (near[1:] | near[:-1]).reshape(len(a) - 1, -1).sum(axis=1)   # dilate(M_t or M_t-1, r)
    sigma = SMOOTH * r
    f = max(1, int(sigma // 3))
    h, w = a.shape[1:]
    cents = [_centroid(x) for x in m]

    def small(x: np.ndarray) -> np.ndarray:
        return cv2.resize(x, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA) if f > 1 else x

    af, mf = [small(x) for x in a], [small(x.astype(np.float32)) for x in m]
    out = np.full(len(a) - 1, np.nan)
    for t in range(1, len(a)):
        if region[t - 1] == 0:
            continue
        pa, pm = af[t - 1], mf[t - 1]
        if cents[t] is not None and cents[t - 1] is not None:
            dy, dx = (cents[t][0] - cents[t - 1][0]) / f, (cents[t][1] - cents[t - 1][1]) / f
            pa, pm = _shift(pa, dy, dx), _shift(pm, dy, dx)
        d = (af[t] - pa) - (mf[t] - pm)
        if sigma > 0:
            d = cv2.GaussianBlur(d, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
        out[t - 1] = np.sqrt(float((d.astype(np.float64) ** 2).sum()) * f * f / region[t - 1])
    return out


def change_maps(alpha: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """float32[T,H,W]: |the residual d of :func:`change_series`| of the pair ending at each frame (frame 0
    and pairs without an earlier mask position: zeros), at full resolution; for pictures of flicker."""
    import cv2
    a = as_float_alpha(alpha)
    m = np.asarray(masks, bool)
    r = band_radius(m)
    out = np.zeros(a.shape, np.float32)
    cents = [_centroid(x) for x in m]
    mf = m.astype(np.float32)
    for t in range(1, len(a)):
        pa, pm = a[t - 1], mf[t - 1]
        if cents[t] is not None and cents[t - 1] is not None:
            dy, dx = cents[t][0] - cents[t - 1][0], cents[t][1] - cents[t - 1][1]
            pa, pm = _shift(pa, dy, dx), _shift(pm, dy, dx)
        d = (a[t] - pa) - (mf[t] - pm)
        out[t] = np.abs(cv2.GaussianBlur(d, (0, 0), SMOOTH * r, borderType=cv2.BORDER_REFLECT) if SMOOTH * r > 0 else d)
    return out


def _nanmean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def sample_scores(alpha: np.ndarray, masks: np.ndarray) -> dict[str, float | None]:
    """The per-sample scores (``stability``, ``leak``, ``hole``, ``off_band``, ``flicker``) of one matte
    uint8 or float [T,H,W] against its input masks bool[T,H,W]."""
    a = as_float_alpha(alpha)
    m = np.asarray(masks, bool)
    if a.shape != m.shape or a.ndim != 3:
        raise ValueError(f"alpha {a.shape} and masks {m.shape} must both be [T,H,W]")
    r = band_radius(m)
    dil, ero = dilate(m, r), erode(m, r)
    hi, lo = int((a > STABLE_HI).sum()), int((a > STABLE_LO).sum())
    total = float(a.sum(dtype=np.float64))
    core = int(ero.sum())
    semi = (a > schema.SEMI_LO) & (a < schema.SEMI_HI)
    area = int(m.sum())
    return {
        Col.STABILITY: hi / lo if lo else 1.0,
        Col.LEAK: float((a * ~dil).sum(dtype=np.float64) / total) if total > 0 else 0.0,
        Col.HOLE: float((ero & (a < HOLE_ALPHA)).sum() / core) if core else None,
        Col.OFF_BAND: float((np.where(m, 1 - a, a) * (semi & ~(dil & ~ero))).sum(dtype=np.float64) / area)
        if area else None,
        Col.FLICKER: _nanmean(change_series(a, m, r, dil)),
    }


# --- scores across the windows of a masklet -------------------------------------------------------


@dataclass
class Window:
    """One ok sample of a masklet: its key, annotated frame indices, alpha and masks ([T,H,W] each)."""

    key: str
    ann: list[int]
    alpha: np.ndarray
    masks: np.ndarray


def overlap_mad(a: np.ndarray, b: np.ndarray, masks: np.ndarray, radius: int | None = None) -> float | None:
    """Disagreement of two mattes of the same frames [N,H,W] (see the module docstring); None when the
    masks are empty."""
    m = np.asarray(masks, bool)
    r = band_radius(m) if radius is None else radius
    region = dilate(m, r).reshape(len(m), -1).sum(axis=1)
    diff = np.abs(as_float_alpha(a).astype(np.float64) - as_float_alpha(b)).reshape(len(m), -1).sum(axis=1)
    ok = region > 0
    return float((diff[ok] / region[ok]).mean()) if ok.any() else None


def window_scores(windows: Iterable[Window]) -> dict[str, dict[str, float | None]]:
    """``overlap_mad`` and ``seam_jump`` of each window of one masklet, against its earlier windows
    (key -> scores; the first window's are None). Windows must come in start order; only those that can
    still share frames with a later one are kept (memory: a few windows, not the masklet)."""
    out: dict[str, dict[str, float | None]] = {}
    recent: list[tuple[Window, np.ndarray]] = []      # earlier windows (with their change series), by start
    covered: set[int] = set()
    last_start = None
    for w in windows:
        if last_start is not None and w.ann[0] < last_start:
            raise ValueError("windows must come in start order")
        last_start = w.ann[0]
        changes = change_series(w.alpha, w.masks)
        res: dict[str, float | None] = {Col.OVERLAP_MAD: None, Col.SEAM_JUMP: None}
        pos = {f: t for t, f in enumerate(w.ann)}
        vals = []      # overlap: every earlier window sharing frames; each shared frame once per window
        for p, _ in recent:
            shared = [(t, pos[f]) for t, f in enumerate(p.ann) if f in pos]
            if shared:
                ip, iw = (list(x) for x in zip(*shared))
                v = overlap_mad(p.alpha[ip], w.alpha[iw], w.masks[iw])
                if v is not None:
                    vals.append((v, len(shared)))
        if vals:
            res[Col.OVERLAP_MAD] = sum(v * n for v, n in vals) / sum(n for _, n in vals)
        if recent:    # seam: (last frame before w's first new frame, from the previous window) -> that frame
            p, p_changes = recent[-1]
            new = [t for t, f in enumerate(w.ann) if f not in covered]
            f_prev = w.ann[new[0]] - 1 if new else None
            if f_prev in p.ann:
                tp, tw = p.ann.index(f_prev), new[0]
                pair_a = np.stack([as_float_alpha(p.alpha[tp]), as_float_alpha(w.alpha[tw])])
                pair_m = np.stack([p.masks[tp], w.masks[tw]])
                c = change_series(pair_a, pair_m, band_radius(np.concatenate([p.masks, w.masks])))[0]
                inside = np.concatenate([p_changes, changes])
                inside = inside[np.isfinite(inside)]
                if np.isfinite(c) and len(inside):
                    res[Col.SEAM_JUMP] = float(c / max(float(np.median(inside)), SEAM_FLOOR))
        out[w.key] = res
        covered.update(w.ann)
        recent = [(p, c) for p, c in recent if p.ann[-1] >= w.ann[0]] + [(w, changes)]
    return out


# --- verdicts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Warn and fail levels per score (``stability`` warns and fails *below* its levels, the others
    above). Calibrated on synthetic ground truth and graded damage (``benchmarks/qc_validation.py``):
    undamaged ground truth passes; see the README section "Quality control"."""

    stability_warn: float = 0.3
    stability_fail: float = 0.15
    leak_warn: float = 0.06
    leak_fail: float = 0.15
    hole_warn: float = 0.05
    hole_fail: float = 0.15
    off_band_warn: float = 0.1
    off_band_fail: float = 0.25
    flicker_warn: float = 0.15
    flicker_fail: float = 0.3
    overlap_mad_warn: float = 0.05
    overlap_mad_fail: float = 0.15
    seam_jump_warn: float = 6.0
    seam_jump_fail: float = 12.0

    LOWER_IS_WORSE = (Col.STABILITY,)

    def levels(self, score: str) -> tuple[float, float]:
        return getattr(self, f"{score}_warn"), getattr(self, f"{score}_fail")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def parse(cls, text: str | None, base: "Thresholds | None" = None) -> "Thresholds":
        """``"leak_warn=0.02,hole_fail=0.2"`` over ``base`` (default: the defaults); ValueError names a bad item."""
        values = (base or cls()).as_dict()
        for item in filter(None, (s.strip() for s in (text or "").split(","))):
            name, sep, val = item.partition("=")
            name = name.strip()
            if not sep or name not in values:
                raise ValueError(f"bad threshold {item!r}: use NAME=VALUE with NAME one of {sorted(values)}")
            try:
                values[name] = float(val)
            except ValueError:
                raise ValueError(f"bad threshold {item!r}: {val!r} is not a number") from None
        return cls(**values)

    @classmethod
    def from_dict(cls, d: Mapping[str, float] | None) -> "Thresholds":
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in (d or {}).items() if k in names})


def past_level(value: float, level: float, lower_is_worse: bool) -> float:
    """How far past `level` a value lies, relative to the level (0 or less: not crossed)."""
    scale = abs(level) or 1.0
    return (level - value) / scale if lower_is_worse else (value - level) / scale


def verdict(scores: Mapping[str, float | None], th: Thresholds | None = None) -> tuple[str, str]:
    """(``pass``|``warn``|``fail``, reason): the reason lists the scores that crossed a level, those that
    set the verdict first, each ordered by how far past its level it lies ("" when pass)."""
    th = th or Thresholds()
    fails, warns = [], []
    for s in SCORES:
        v = scores.get(s)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        warn, fail = th.levels(s)
        low = s in Thresholds.LOWER_IS_WORSE
        if past_level(v, fail, low) > 0:
            fails.append((past_level(v, fail, low), s))
        elif past_level(v, warn, low) > 0:
            warns.append((past_level(v, warn, low), s))
    reasons = [s for _, s in sorted(fails, reverse=True)] + [s for _, s in sorted(warns, reverse=True)]
    qc = schema.QC_FAIL if fails else schema.QC_WARN if warns else schema.QC_PASS
    return qc, ",".join(reasons)


def verdict_columns(row: Mapping, th: Thresholds | None = None) -> dict[str, str | None]:
    """``qc`` and ``qc_reason`` of a manifest row (None for a failed row)."""
    if row.get(Col.STATUS) != schema.STATUS_OK:
        return {Col.QC: None, Col.QC_REASON: None}
    qc, reason = verdict(row, th)
    return {Col.QC: qc, Col.QC_REASON: reason}


# --- a shard's rows: cross-window scores and verdicts (the writer's hook) ----------------------------


def window_of(key: str, ext_map: Mapping[str, bytes]) -> Window:
    """A :class:`Window` decoded from a sample's members (ext -> bytes); PNGs through PIL, so it is safe
    in processes that imported decord."""
    from mava.sample import decode_sample

    s = decode_sample(key, dict(ext_map), None, ("alpha", "mask"))
    return Window(key, [int(x) for x in s.meta[Col.ANN_FRAMES]], s.alpha, s.masks)


def masklet_groups(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    """Ok rows grouped by masklet (video, source, masklet id), each group in start order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get(Col.STATUS) == schema.STATUS_OK:
            groups.setdefault((r[Col.VIDEO_ID], r[Col.SOURCE], r[Col.MASKLET_ID]), []).append(r)
    return {k: sorted(v, key=lambda r: r[Col.START]) for k, v in groups.items()}


def score_rows(rows: list[dict], members: Callable[[str], Mapping[str, bytes]],
               th: Thresholds | None = None) -> list[dict]:
    """Add ``overlap_mad``, ``seam_jump`` (from the decoded windows of each masklet with more than one
    window) and the verdict columns to manifest rows; ``members(key)`` gives a sample's ext -> bytes.
    Memory: a few windows at a time. Returns the rows (updated in place)."""
    for group in masklet_groups(rows).values():
        if len(group) > 1:
            scores = window_scores(window_of(r[Col.KEY], members(r[Col.KEY])) for r in group)
            for r in group:
                r.update(scores[r[Col.KEY]])
    for r in rows:
        r.update(verdict_columns(r, th))
    return rows
