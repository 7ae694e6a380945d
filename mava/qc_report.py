"""``python -m mava qc``: how far a split's mattes can be trusted. Distributions of each QC score, counts by
verdict and by reason, per-video summaries, the worst samples, and a contact sheet of them (frame with
the input mask, the mask, alpha, and where the score that flagged each looks). The dataset card shows
the same (:func:`card_section`)."""

from __future__ import annotations

import collections
import posixpath
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from mava import qc, schema, views
from mava.folder import SplitDir, as_split
from mava.preview import BG, TEXT, _font, load_sample, panels
from mava.schema import Col

SCORES_PNG = "qc_scores.png"
WORST_PNG = "qc_worst.png"


@dataclass
class QCReport:
    split: str
    ok: int
    missing: int                                   # ok rows without scores (older output)
    verdicts: dict[str, int]
    reasons: dict[str, dict[str, int]]             # score -> {"fail": n, "warn": n}
    scores: dict[str, np.ndarray]                  # score -> values of ok rows (nulls left out)
    videos: list[dict]                             # per video: samples, pass, warn, fail, top reason
    worst: list[dict]                              # rows, worst first
    thresholds: qc.Thresholds
    verdicts_from: str                             # manifest | view
    views: list[str] = field(default_factory=list)


def severity(row: dict, th: qc.Thresholds) -> float:
    """How far the row's worst score lies past its warn level, relative to it (> 0: flagged)."""
    worst = -np.inf
    for s in qc.SCORES:
        v = row.get(s)
        if v is None or not np.isfinite(v):
            continue
        warn, _ = th.levels(s)
        worst = max(worst, qc.past_level(v, warn, s in qc.Thresholds.LOWER_IS_WORSE))
    return float(worst)


def build(split_dir: str | SplitDir, worst: int = 12) -> QCReport:
    """The report of a split (the verdict view laid over the manifest when there is one)."""
    split = as_split(split_dir)
    table, vdef = views.qc_table(split)
    th = qc.Thresholds.from_dict(vdef.get(schema.VIEW_THRESHOLDS)) if vdef else qc.Thresholds()
    rows = [r for r in table.to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    missing = sum(all(r[s] is None for s in qc.SAMPLE_SCORES) for r in rows)
    verdicts = collections.Counter(r[Col.QC] or "none" for r in rows)
    reasons: dict[str, dict[str, int]] = {s: {schema.QC_FAIL: 0, schema.QC_WARN: 0} for s in qc.SCORES}
    for r in rows:
        for s in filter(None, (r[Col.QC_REASON] or "").split(",")):
            warn, fail = th.levels(s)
            low = s in qc.Thresholds.LOWER_IS_WORSE
            level = schema.QC_FAIL if r[s] is not None and qc.past_level(r[s], fail, low) > 0 else schema.QC_WARN
            reasons.setdefault(s, {schema.QC_FAIL: 0, schema.QC_WARN: 0})[level] += 1
    per_video: dict[str, dict] = {}
    for r in rows:
        v = per_video.setdefault(r[Col.VIDEO_ID], {Col.VIDEO_ID: r[Col.VIDEO_ID], "samples": 0, schema.QC_PASS: 0,
                                                   schema.QC_WARN: 0, schema.QC_FAIL: 0, "_reasons": collections.Counter()})
        v["samples"] += 1
        if r[Col.QC] in qc.VERDICTS:
            v[r[Col.QC]] += 1
        v["_reasons"].update(filter(None, (r[Col.QC_REASON] or "").split(",")))
    videos = []
    for v in sorted(per_video.values(), key=lambda v: (-v[schema.QC_FAIL], -v[schema.QC_WARN], v[Col.VIDEO_ID])):
        top = v.pop("_reasons").most_common(1)
        videos.append(v | {"top_reason": top[0][0] if top else ""})
    scored = [r for r in rows if r[Col.QC] is not None]
    ranked = sorted(scored, key=lambda r: (-severity(r, th), r[Col.KEY]))[:worst]
    return QCReport(split.split, len(rows), missing, dict(verdicts), reasons,
                    {s: np.array([r[s] for r in rows if r[s] is not None], np.float64) for s in qc.SCORES},
                    videos, ranked, th, "view" if vdef else "manifest", views.list_views(split))


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "-"


def render(rep: QCReport, max_videos: int = 20) -> str:
    """The text report."""
    th = rep.thresholds
    out = [f"split {rep.split}: {rep.ok} ok samples; verdicts from the {rep.verdicts_from}"
           + (" (recomputed: `mava qc --recompute`)" if rep.verdicts_from == "view" else " (default thresholds at write time)")]
    if rep.missing:
        out.append(f"NOTE: {rep.missing} ok samples have no QC scores (written before QC existed; a plain rerun keeps "
                   "those shards): compute the scores from the shards into the verdict view with "
                   "`python -m mava qc DIR --recompute --from-tar`, or redo the shards (`pipeline.run ... --shards 0-N`)")
    out.append("verdicts: " + ", ".join(f"{v} {rep.verdicts.get(v, 0)} ({_pct(rep.verdicts.get(v, 0), rep.ok)})"
                                        for v in (*qc.VERDICTS, "none") if v != "none" or rep.verdicts.get(v)))
    out.append("reasons (a sample may have several):")
    for s in qc.SCORES:
        r = rep.reasons.get(s, {})
        out.append(f"  {s:12s} fail {r.get(schema.QC_FAIL, 0):6d}  warn {r.get(schema.QC_WARN, 0):6d}")
    out.append("scores (ok samples; thresholds warn / fail, stability flags values below them):")
    for s in qc.SCORES:
        v = rep.scores[s]
        warn, fail = th.levels(s)
        if not len(v):
            out.append(f"  {s:12s} no values (warn {warn:g} / fail {fail:g})")
            continue
        q = np.percentile(v, [1, 50, 90, 99])
        out.append(f"  {s:12s} n {len(v):6d}  min {v.min():.4f}  p1 {q[0]:.4f}  median {q[1]:.4f}  p90 {q[2]:.4f}  "
                   f"p99 {q[3]:.4f}  max {v.max():.4f}   (warn {warn:g} / fail {fail:g})")
        out += _histogram(v, warn, fail, s in qc.Thresholds.LOWER_IS_WORSE)
    out.append(f"per video (worst first{f', {max_videos} of {len(rep.videos)}' if len(rep.videos) > max_videos else ''}):")
    out.append(f"  {'video':14s} {'samples':>7s} {'pass':>6s} {'warn':>6s} {'fail':>6s}  top reason")
    for v in rep.videos[:max_videos]:
        out.append(f"  {v[Col.VIDEO_ID]:14s} {v['samples']:7d} {v[schema.QC_PASS]:6d} {v[schema.QC_WARN]:6d} "
                   f"{v[schema.QC_FAIL]:6d}  {v['top_reason']}")
    out.append(f"worst {len(rep.worst)} samples:")
    for r in rep.worst:
        flag = (r[Col.QC_REASON] or "").split(",")[0]
        val = f"{flag}={r[flag]:.4f}" if flag else ""
        out.append(f"  {r[Col.KEY]:28s} {r[Col.QC]:5s} {val:22s} reasons: {r[Col.QC_REASON] or '-'}")
    if rep.views:
        out.append("views: " + ", ".join(rep.views))
    return "\n".join(out)


def _histogram(v: np.ndarray, warn: float, fail: float, low: bool, width: int = 30) -> list[str]:
    """Counts in bins laid on the thresholds: 4 bins below warn (above, for stability), warn..fail, beyond."""
    if low:
        top = max(1.0, float(v.max()) + 1e-9)
        edges = [0.0, fail, warn] + list(np.linspace(warn, top, 5)[1:])
    else:
        edges = list(np.linspace(0.0, warn, 5)) + [fail, max(float(v.max()), 2 * fail)]
    counts, _ = np.histogram(v, bins=edges)
    peak = max(1, int(counts.max()))
    return [f"      [{lo:8.4f}, {hi:8.4f}) {int(c):6d} {'#' * int(round(width * c / peak))}"
            for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


# --- figures ----------------------------------------------------------------------------------------


def plot_scores(rep: QCReport, path) -> None:
    """Histograms of the seven scores with their warn / fail levels, and the verdict counts (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4))
    for ax, s in zip(axes.flat, qc.SCORES):
        v = rep.scores[s]
        warn, fail = rep.thresholds.levels(s)
        hi = 1.0 if s in qc.Thresholds.LOWER_IS_WORSE else max(float(v.max()) if len(v) else 0.0, 1.5 * max(warn, fail))
        ax.hist(v, bins=np.linspace(0.0, hi, 31), color="#3b7dd8", edgecolor="white")
        ax.axvline(warn, color="#e0a020", lw=1.5, label="warn")
        ax.axvline(fail, color="#d8543b", lw=1.5, label="fail")
        ax.set_title(f"{s} (n={len(v)})")
        ax.set_xlim(0, hi)
    ax = axes.flat[-1]
    labels = list(qc.VERDICTS)
    ax.bar(labels, [rep.verdicts.get(v, 0) for v in labels], color=["#2e9e5b", "#e0a020", "#d8543b"])
    ax.set_title("verdicts")
    axes.flat[0].legend(loc="upper right")
    fig.suptitle(f"MA-V {rep.split}: QC scores of {rep.ok} ok samples (lines: warn / fail thresholds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def score_map(score: str, alpha: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """float32[T,H,W] in [0,1]: where a score looks in each frame (what it counts), for the contact sheet."""
    a = qc.as_float_alpha(alpha)
    m = np.asarray(masks, bool)
    r = qc.band_radius(m)
    dil, ero = qc.dilate(m, r), qc.erode(m, r)
    if score == Col.STABILITY:
        return ((a > qc.STABLE_LO) & (a <= qc.STABLE_HI)).astype(np.float32)
    if score == Col.LEAK:
        return a * ~dil
    if score == Col.HOLE:
        return (ero & (a < qc.HOLE_ALPHA)).astype(np.float32)
    if score == Col.OFF_BAND:
        semi = (a > schema.SEMI_LO) & (a < schema.SEMI_HI)
        return (np.where(m, 1 - a, a) * (semi & ~(dil & ~ero))).astype(np.float32)
    # temporal scores: the change the mask does not explain (motion-compensated, as flicker measures it)
    return qc.change_maps(a, m)


def _heat(x: np.ndarray, tile: int) -> np.ndarray:
    """A red heat map over dark grey, long side `tile`."""
    h0, w0 = x.shape
    s = tile / max(h0, w0)
    import cv2

    x = cv2.resize(x.astype(np.float32), (max(1, round(w0 * s)), max(1, round(h0 * s))), interpolation=cv2.INTER_AREA)
    x = np.clip(x / max(1e-6, float(x.max())), 0, 1)[..., None]
    return (np.array([40, 40, 46], np.float32) * (1 - x) + np.array([255, 60, 40], np.float32) * x).astype(np.uint8)


def worst_sheet(split_dir: str | SplitDir, rows: list[dict], tile: int = 180) -> Image.Image:
    """One row per sample, at the frame where its flagging score looks most: frame + input-mask outline,
    the input mask, alpha, and that score's map; captioned with key, verdict, the score and its value."""
    split = as_split(split_dir)
    blocks = []
    ok = [r for r in split.read_manifest().to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    for r in rows:
        s = load_sample(split, r[Col.KEY])
        flag = (r[Col.QC_REASON] or "").split(",")[0] or Col.LEAK
        heat = score_map(flag, s.alpha, s.masks)
        if flag == Col.OVERLAP_MAD:  # the disagreement with the previous window on the shared frames
            heat = _overlap_map(split, ok, r, s.alpha)
        t = int(np.argmax(heat.reshape(len(heat), -1).sum(axis=1)))
        frame_panel, _, alpha_panel = panels(s, t, tile)
        mask_panel = np.repeat((panels_mask(s.masks[t], alpha_panel.shape[:2]))[..., None], 3, -1)
        val = r.get(flag)
        cap = (f"{r[Col.KEY]}  {r[Col.QC]}  {flag}={val:.4f}" if val is not None else f"{r[Col.KEY]}  {r[Col.QC]}") \
            + f"  (frame {s.meta.get(Col.ANN_FRAMES, [t])[t]}; all: {r[Col.QC_REASON] or '-'})"
        blocks.append((cap, [frame_panel, mask_panel, alpha_panel, _heat(heat[t], tile)]))
    labels = ("frame + input mask", "input mask", "alpha", "where the score looks")
    pw = max(p.shape[1] for _, ps in blocks for p in ps) if blocks else tile
    gap, capw, head = 8, 20, 30
    W = gap + 4 * (pw + gap)
    H = head + sum(capw + ps[0].shape[0] + gap for _, ps in blocks) + gap
    sheet = Image.new("RGB", (W, max(H, head + 40)), BG)
    draw = ImageDraw.Draw(sheet)
    for j, lab in enumerate(labels):
        draw.text((gap + j * (pw + gap), 8), lab, fill=TEXT, font=_font(15))
    if not blocks:
        draw.text((gap, head + 8), "no scored samples", fill=TEXT, font=_font(15))
    y = head
    for cap, ps in blocks:
        draw.text((gap, y + 2), cap, fill=TEXT, font=_font(13))
        for j, p in enumerate(ps):
            sheet.paste(Image.fromarray(p), (gap + j * (pw + gap), y + capw))
        y += capw + ps[0].shape[0] + gap
    return sheet


def _overlap_map(split: SplitDir, ok: list[dict], row: dict, alpha: np.ndarray) -> np.ndarray:
    """|alpha - the previous overlapping window's alpha| on the frames they share (0 elsewhere)."""
    out = np.zeros(alpha.shape, np.float32)
    ann = list(row[Col.ANN_FRAMES])
    prev = [o for o in ok if (o[Col.VIDEO_ID], o[Col.SOURCE], o[Col.MASKLET_ID]) ==
            (row[Col.VIDEO_ID], row[Col.SOURCE], row[Col.MASKLET_ID]) and o[Col.START] < row[Col.START]
            and set(o[Col.ANN_FRAMES]) & set(ann)]
    if not prev:
        return out
    p = max(prev, key=lambda o: o[Col.START])
    pa = load_sample(split, p[Col.KEY]).alpha
    for tp, f in enumerate(p[Col.ANN_FRAMES]):
        if f in ann:
            t = ann.index(f)
            out[t] = np.abs(alpha[t].astype(np.float32) - pa[tp].astype(np.float32)) / 255.0
    return out


def panels_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


# --- the dataset card's section -----------------------------------------------------------------------


def card_section(split_dir: str | SplitDir, fs=None, froot: str | None = None, fig_rel: str = "figures",
                 worst: int = 6) -> tuple[list[str], dict[str, str]]:
    """Markdown lines of the card's "Quality control" section and the figures written under ``froot``
    (on filesystem ``fs``; none when ``froot`` is None)."""
    rep = build(split_dir, worst)
    th = rep.thresholds
    lines = ["## Quality control", "",
             "Every matte carries scores of how far it can be trusted (`mava/qc.py`, README \"Quality control\"): "
             "stability, leak, hole, off_band, flicker, overlap_mad and seam_jump, and a verdict `qc` "
             f"(pass / warn / fail) from thresholds; verdicts from the {rep.verdicts_from}.", ""]
    if rep.missing:
        lines += [f"{rep.missing} samples were written before QC existed and have no scores.", ""]
    lines += ["| verdict | samples | share |", "| --- | --- | --- |"]
    lines += [f"| {v} | {rep.verdicts.get(v, 0)} | {_pct(rep.verdicts.get(v, 0), rep.ok)} |" for v in qc.VERDICTS]
    lines += ["", "| score | warn | fail | samples warned | samples failed | median |", "| --- | --- | --- | --- | --- | --- |"]
    for s in qc.SCORES:
        warn, fail = th.levels(s)
        r = rep.reasons.get(s, {})
        med = f"{np.median(rep.scores[s]):.4f}" if len(rep.scores[s]) else "-"
        lines.append(f"| {s} | {warn:g} | {fail:g} | {r.get(schema.QC_WARN, 0)} | {r.get(schema.QC_FAIL, 0)} | {med} |")
    lines += ["", "Keep only trusted samples: `python -m mava filter <folder> --where \"qc = 'pass'\" --name clean`, "
              "then `StreamingClips(..., subset=\"clean\")` or `mava.hf.load(..., subset=\"clean\")`.", ""]
    figures: dict[str, str] = {}
    if froot is not None and fs is not None:
        p = posixpath.join(froot, SCORES_PNG)
        with fs.open(p, "wb") as f:
            plot_scores(rep, f)
        figures["qc_scores"] = p
        lines += [f"![QC scores]({fig_rel}/{SCORES_PNG})", ""]
        if rep.worst:
            p = posixpath.join(froot, WORST_PNG)
            with fs.open(p, "wb") as f:
                worst_sheet(split_dir, rep.worst).save(f, format="PNG")
            figures["qc_worst"] = p
            lines += [f"The {len(rep.worst)} samples QC trusts least (frame with the input mask, the mask, alpha, "
                      "and where the score that flagged each looks):", "", f"![worst samples]({fig_rel}/{WORST_PNG})", ""]
    return lines, figures
