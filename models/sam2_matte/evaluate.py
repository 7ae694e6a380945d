"""Score SAM2-Matte against ground-truth alpha with ``mava eval``'s metrics and conventions.

Each clip is one masklet of an MA-V split, its annotated frames joined in order as ``mava eval`` joins
them (segments by start, each frame from the first segment that covers it). SAM2-Matte tracks the clip
from the masklet's input (SA-V) mask on its first frame; the same frames are scored for the input mask
(``mask``) and for MA-V's own matte (``mava``), so the three rows are directly comparable.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import fsspec
import numpy as np
from tqdm import tqdm

from mava import metrics, schema
from mava.eval import ClipResult, EvalReport, Track, gt_path, read_alpha_png
from mava.manifest import as_split, ok_rows
from mava.sample import decode_sample
from mava.schema import Col

log = logging.getLogger(__name__)

METHOD = "sam2_matte"
BASELINES = ("mask", "mava")
COLS = (("mad", "MAD"), ("mse", "MSE"), ("grad", "Grad"), ("conn", "Conn"), ("dtssd", "dtSSD"))


def clips(split_url: str, limit: int | None = None) -> list[tuple[str, list[dict]]]:
    """(clip name, rows in start order) of every masklet with ok samples."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok_rows(split_url):
        groups[(r[Col.VIDEO_ID], r[Col.SOURCE], r[Col.MASKLET_ID])].append(r)
    out = []
    for (vid, source, mid), rows in sorted(groups.items()):
        out.append((f"{vid}_{schema.SOURCE_CODE[source]}{int(mid):03d}", sorted(rows, key=lambda r: r[Col.START])))
    return out[:limit] if limit else out


def read_clip(split, rows: list[dict]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(annotated frame indices, frames uint8[N,H,W,3], MA-V alpha uint8[N,H,W], input masks bool[N,H,W])."""
    anns, frames, alpha, masks = [], [], [], []
    last = None
    for r in rows:
        take = [i for i, a in enumerate(r[Col.ANN_FRAMES]) if last is None or a > last]
        if not take:
            continue
        s = decode_sample(r[Col.KEY], split.row_members(r), take, ("frames", "alpha", "mask"))
        anns += [int(r[Col.ANN_FRAMES][i]) for i in take]
        frames.append(s.frames)
        alpha.append(s.alpha)
        masks.append(s.masks)
        last = anns[-1]
    return anns, np.concatenate(frames), np.concatenate(alpha), np.concatenate(masks)


def evaluate(net, split_url: str, gt_dir: str, device="cpu", band_radius: int = 10, limit: int | None = None,
             progress: bool = False) -> EvalReport:
    """Track every clip of `split_url` with `net` (a SAM2-Matte model) and score it against `gt_dir`
    (``<gt>/<video_id>/<masklet_id:03d>/<ann_frame:05d>.png``)."""
    from models.sam2_matte.model import Prompt, Tracker

    split = as_split(split_url)
    gfs, groot = fsspec.core.url_to_fs(gt_dir)
    groot = groot.rstrip("/")
    tracker = Tracker(net, device)
    methods = (METHOD, *BASELINES)
    totals = {m: Track() for m in methods}
    results, n_frames, n_missing = [], 0, 0
    for name, rows in tqdm(clips(split_url, limit), desc="eval", disable=not progress):
        anns, frames, mava_alpha, masks = read_clip(split, rows)
        first = next((i for i in range(len(anns)) if masks[i].any()), None)
        if first is None:
            log.warning("%s: the input mask is empty on every frame; skipped", name)
            continue
        preds = list(tracker.run(frames[first:], Prompt(mask=masks[first]), len(anns) - first))
        tracks = {m: Track() for m in methods}
        prev, clip_frames, clip_missing = None, 0, 0
        vid, mid = rows[0][Col.VIDEO_ID], rows[0][Col.MASKLET_ID]
        for j, ann in enumerate(anns[first:], start=first):
            p = f"{groot}/{gt_path(vid, mid, ann)}"
            if not gfs.exists(p):
                clip_missing += 1
                prev = None
                continue
            gt = read_alpha_png(gfs, p)
            pr = {METHOD: preds[j - first].astype(np.float64), "mask": masks[j].astype(np.float64),
                  "mava": mava_alpha[j].astype(np.float64) / 255.0}
            for m, a in pr.items():
                for k, v in metrics.frame_scores(a, gt, band_radius).items():
                    tracks[m].frame[k].append(v)
                if prev is not None and prev[0] == ann - 1:
                    tracks[m].pairs_inside.append(float(metrics.dtssd_pairs(np.stack([prev[1][m], a]),
                                                                            np.stack([prev[2], gt]))[0]))
            prev = (ann, pr, gt)
            clip_frames += 1
        n_frames += clip_frames
        n_missing += clip_missing
        for m in methods:
            totals[m].extend(tracks[m])
        results.append(ClipResult(name, clip_frames, len(rows), clip_missing, {m: tracks[m].summary() for m in methods}))
    if n_frames == 0:
        log.warning("no frame had ground truth under %s", gt_dir)
    return EvalReport(results, {m: totals[m].summary() for m in methods}, n_frames, n_missing)


def render(rep: EvalReport, per_clip: bool = True) -> str:
    """A table like ``mava eval``'s (same units: MAD, MSE x1e3; Grad, Conn /1e3; dtSSD x1e2)."""
    head = f"{'clip / method':36s}" + "".join(f"{h:>10s}" for _, h in COLS)
    out = [f"{rep.frames} frames scored in {len(rep.clips)} clips"
           + (f", {rep.missing_gt} frames without GT skipped" if rep.missing_gt else ""),
           "MAD, MSE x1e3; Grad, Conn /1e3; dtSSD x1e2", head]
    rows = [(c.clip + " " + m, s) for c in rep.clips for m, s in c.methods.items()] if per_clip else []
    rows += [("OVERALL " + m, s) for m, s in rep.overall.items()]
    for label, s in rows:
        out.append(f"{label[:36]:36s}" + "".join(f"{s[k]:10.3f}" for k, _ in COLS))
    return "\n".join(out)
