"""A small MA-V split written by the real shard writer (pipeline.writer) with a real CPU matter,
plus ground-truth alpha in the synthetic split's ``gt_alpha/`` layout, for the mava tests.

Each masklet is a soft disk moving over a textured background; its input masks are the GT alpha
thresholded and degraded (polygon simplification), its segments overlap like the planner's windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mava import degrade, schema
from mava.eval import gt_path
from models.base import build_matter
from pipeline.segments import Segment, SegmentData
from pipeline.writer import encode_sample, failure_row, write_shard

H, W = 36, 48
ANN = 10          # annotated frames per masklet
SEG = 4           # segment length: windows 0, 4, then 6 (shifted back, overlap 2)


def gt_alpha(vid: int, mid: int, ann: int, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = h / H
    cy, cx = h / 2 + (3 * mid - 3) * s, (8 + 2.5 * ann + 4 * vid) * s
    r = (8 + mid) * s
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((r - d) / 4 + 0.5, 0, 1)


def frames_for(vid: int, alphas: np.ndarray, anns: list[int]) -> np.ndarray:
    yy, xx = np.mgrid[0:alphas.shape[1], 0:alphas.shape[2]]
    out = []
    for a, ann in zip(alphas, anns):
        bg = np.stack([(40 + 3 * xx + ann) % 256, (60 + 4 * yy) % 256, np.full_like(xx, 90 + 20 * vid)], -1)
        fg = np.array([230, 90, 40])
        out.append((a[..., None] * fg + (1 - a[..., None]) * bg).round().astype(np.uint8))
    return np.stack(out)


def windows(n: int, seg: int) -> list[tuple[int, int]]:
    starts = list(range(0, n - seg + 1, seg))
    if starts[-1] + seg < n:
        starts.append(n - seg)
    return [(s, max(0, (prev + seg) - s) if i else 0) for i, (s, prev) in enumerate(zip(starts, [0] + starts))]


class _BlurMatter:
    """Stand-in CPU matter (mask blurred by a 5x5 box) while models.cpu is not on this branch."""

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        import cv2

        return np.stack([cv2.blur(x.astype(np.float32), (5, 5)) for x in masks])


def _matter(name: str):
    try:
        return build_matter(name)
    except ModuleNotFoundError:
        return _BlurMatter()


def build(root: Path, split: str = "mava_synth", videos: int = 3, masklets: int = 2, frames: str = "jpg",
          matter: str = "guided", videos_per_shard: int = 2, h: int = H, w: int = W, ann: int = ANN,
          seg_len: int = SEG) -> tuple[Path, Path]:
    """Write ``root/out/<split>`` and ``root/gt_alpha``; return (split dir, gt dir)."""
    out = root / "out" / split
    gt_dir = root / "gt_alpha"
    m = _matter(matter)
    shard_samples: dict[int, list] = {}
    shard_failures: dict[int, list] = {}
    for v in range(videos):
        vid = f"synth_{v:06d}"
        shard = v // videos_per_shard
        shard_samples.setdefault(shard, [])
        shard_failures.setdefault(shard, [])
        for mid in range(masklets):
            gts = np.stack([gt_alpha(v, mid, a, h, w) for a in range(ann)])
            for a in range(ann):
                p = gt_dir / gt_path(vid, mid, a)
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((gts[a] * 255).round().astype(np.uint8), "L").save(p)
            masks = np.stack([degrade.simplify_polygons(g > 0.5, 2.0) for g in gts])
            for start, overlap in windows(ann, seg_len):
                seg = Segment(vid, "manual", mid, start, seg_len, overlap)
                anns = seg.ann_frames
                fr = frames_for(v, gts[anns], anns)
                mk = masks[anns]
                rles = []
                for x in mk:
                    r = mask_utils.encode(np.asfortranarray(x.astype(np.uint8)))
                    rles.append({"size": list(r["size"]), "counts": r["counts"].decode()})
                alpha = m.refine(fr, mk)
                a8 = (np.clip(alpha, 0, 1) * 255).round().astype(np.uint8)
                shard_samples[shard].append(encode_sample(SegmentData(seg, fr, mk, rles), a8, matter, frames))
        # one failed masklet per video, as the job records it
        shard_failures[shard].append(failure_row(schema.sample_key(vid, "manual", 9, 0), vid, "EmptyMasklet",
                                                 "masklet 9 is never visible", source="manual", masklet_id=9,
                                                 start=0, matter=matter))
    for s in sorted(shard_samples):
        write_shard(str(out), split, s, shard_samples[s], shard_failures[s])
    return out, gt_dir
