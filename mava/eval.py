"""Evaluate MA-V mattes against ground-truth alpha PNGs, per clip and overall.

GT layout (the synthetic split's ``gt_alpha/``): ``<gt>/<video_id>/<masklet_id:03d>/<ann_frame:05d>.png``.
A clip is one masklet: its segments are joined in start order, each annotated frame taken from the
first segment that covers it. dtSSD is split into pairs inside a segment and pairs across a segment
boundary (the last frame of one segment, the first new frame of the next), whose jump shows how
well consecutive windows agree.
"""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import fsspec
import numpy as np
from PIL import Image
from tqdm import tqdm

from mava import degrade, metrics, schema
from mava.folder import SplitDir, as_split
from mava.manifest import ok_rows
from mava.schema import Col
from mava.sample import decode_sample

log = logging.getLogger(__name__)


def gt_path(video_id: str, masklet_id: int, ann_frame: int) -> str:
    """Relative path of one GT alpha PNG."""
    return f"{video_id}/{int(masklet_id):03d}/{int(ann_frame):05d}.png"


def read_alpha_png(fs, path: str) -> np.ndarray:
    """float[H,W] in [0,1] from any PNG (converted to 8-bit gray)."""
    with fs.open(path, "rb") as f:
        im = Image.open(io.BytesIO(f.read()))
        return np.asarray(im.convert("L"), np.float64) / 255.0


@dataclass
class Track:
    """Frames of one method on one clip: per-frame scores and per-pair dtSSD with boundary flags."""

    frame: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    pairs_inside: list[float] = field(default_factory=list)
    pairs_boundary: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        out = {k: _nanmean(v) for k, v in self.frame.items()}
        out["dtssd"] = _nanmean(self.pairs_inside + self.pairs_boundary)
        out["dtssd_inside"] = _nanmean(self.pairs_inside)
        out["dtssd_boundary"] = _nanmean(self.pairs_boundary)
        return out

    def extend(self, other: "Track") -> None:
        for k, v in other.frame.items():
            self.frame[k] += v
        self.pairs_inside += other.pairs_inside
        self.pairs_boundary += other.pairs_boundary


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


@dataclass
class ClipResult:
    clip: str
    frames: int
    segments: int
    missing_gt: int
    methods: dict[str, dict[str, float]]


@dataclass
class EvalReport:
    clips: list[ClipResult]
    overall: dict[str, dict[str, float]]
    frames: int
    missing_gt: int

    def as_dict(self) -> dict:
        return {"frames": self.frames, "missing_gt": self.missing_gt, "overall": self.overall,
                "clips": [c.__dict__ for c in self.clips]}


COLS = ("mad", "mse", "grad", "conn", "mad_band", "dtssd", "dtssd_inside", "dtssd_boundary")
HEAD = {"mad": "MAD", "mse": "MSE", "grad": "Grad", "conn": "Conn", "mad_band": "MAD-band", "dtssd": "dtSSD",
        "dtssd_inside": "dtSSD-in", "dtssd_boundary": "dtSSD-bnd"}


def _fmt(v: float) -> str:
    return f"{v:9.3f}" if np.isfinite(v) else "      nan"


def render(rep: EvalReport, per_clip: bool = True) -> str:
    head = f"{'clip / method':40s}" + "".join(f"{HEAD[c]:>10s}" for c in COLS)
    out = [f"{rep.frames} frames scored in {len(rep.clips)} clips"
           + (f", {rep.missing_gt} frames without GT skipped" if rep.missing_gt else ""),
           "MAD, MSE x1e3; Grad, Conn /1e3; dtSSD x1e2; mad_band = MAD over the GT transition band", head]
    if per_clip:
        for c in rep.clips:
            for m, s in c.methods.items():
                out.append(f"{(c.clip + ' ' + m)[:40]:40s}" + "".join(f" {_fmt(s[k])}" for k in COLS))
    for m, s in rep.overall.items():
        out.append(f"{('OVERALL ' + m)[:40]:40s}" + "".join(f" {_fmt(s[k])}" for k in COLS))
    for m, s in rep.overall.items():
        jump = s["dtssd_boundary"] - s["dtssd_inside"]
        out.append(f"{m}: dtSSD at segment boundaries {_fmt(s['dtssd_boundary']).strip()} vs inside "
                   f"{_fmt(s['dtssd_inside']).strip()} (jump {_fmt(jump).strip()})")
    return "\n".join(out)


def evaluate(split_dir: str | SplitDir, gt_dir: str, baselines: tuple[str, ...] = ("mask",),
             band_radius: int = 10, progress: bool = False) -> EvalReport:
    """Score every ok sample's matte (and the input-mask `baselines`: "mask" or a degradation name)."""
    split = as_split(split_dir)
    gfs, groot = fsspec.core.url_to_fs(gt_dir)
    groot = groot.rstrip("/")
    clips: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok_rows(split):
        clips[(r[Col.VIDEO_ID], r[Col.SOURCE], r[Col.MASKLET_ID])].append(r)
    methods = ("matte",) + tuple(baselines)
    results, totals = [], {m: Track() for m in methods}
    n_frames = n_missing = 0
    for (vid, source, mid), rows in tqdm(sorted(clips.items()), desc="eval", disable=not progress):
        rows.sort(key=lambda r: r[Col.START])
        tracks = {m: Track() for m in methods}
        last_ann, prev = None, None  # prev: (ann, {method: pred}, gt) of the previous frame scored
        clip_frames = clip_missing = 0
        for seg_i, r in enumerate(rows):
            take = [i for i, a in enumerate(r[Col.ANN_FRAMES]) if last_ann is None or a > last_ann]
            if not take:
                continue
            s = decode_sample(r[Col.KEY], split.row_members(r), take, ("alpha", "mask"))
            for j, i in enumerate(take):
                ann = r[Col.ANN_FRAMES][i]
                p = gt_path(vid, mid, ann)
                full = f"{groot}/{p}"
                if not gfs.exists(full):
                    clip_missing += 1
                    prev = None
                    continue
                gt = read_alpha_png(gfs, full)
                preds = {"matte": s.alpha[j].astype(np.float64) / 255.0}
                for b in baselines:
                    m = s.masks[j] if b == "mask" else degrade.DEGRADATIONS[b](s.masks[j])
                    preds[b] = m.astype(np.float64)
                if gt.shape != preds["matte"].shape:
                    raise ValueError(f"GT {p} is {gt.shape}, matte of {r[Col.KEY]} is {preds['matte'].shape}")
                for m, pr in preds.items():
                    for k, v in metrics.frame_scores(pr, gt, band_radius).items():
                        tracks[m].frame[k].append(v)
                if prev is not None and prev[0] == ann - 1:
                    boundary = j == 0 and seg_i > 0
                    for m, pr in preds.items():
                        v = float(metrics.dtssd_pairs(np.stack([prev[1][m], pr]), np.stack([prev[2], gt]))[0])
                        (tracks[m].pairs_boundary if boundary else tracks[m].pairs_inside).append(v)
                prev = (ann, preds, gt)
                clip_frames += 1
            last_ann = r[Col.ANN_FRAMES][take[-1]]
        n_frames += clip_frames
        n_missing += clip_missing
        for m in methods:
            totals[m].extend(tracks[m])
        results.append(ClipResult(f"{vid}_{schema.SOURCE_CODE[source]}{int(mid):03d}", clip_frames, len(rows), clip_missing,
                                  {m: tracks[m].summary() for m in methods}))
    if n_frames == 0:
        log.warning("no frame had ground truth under %s", gt_dir)
    return EvalReport(results, {m: totals[m].summary() for m in methods}, n_frames, n_missing)


def write_json(rep: EvalReport, path: str) -> None:
    with fsspec.open(path, "w") as f:
        json.dump(rep.as_dict(), f, indent=1)
