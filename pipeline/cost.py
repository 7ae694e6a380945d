"""``python -m pipeline.cost``: GPU-hours to matte a split, counted from its annotation files.

Reads only the masklet JSON files (no video is opened): masklets, annotated frames inside each
masklet's visible span, and the frames the matter actually processes (segments, overlap included).
GPU-hours = processed frames / (frames/s per GPU) / 3600, for each rate given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pipeline import sav
from pipeline.errors import SampleError
from pipeline.reader import ReaderConfig, masklet_sources, list_videos
from pipeline.segments import plan_masklet

log = logging.getLogger("pipeline.cost")

#: frames/s per GPU at 1024x576 used when no --rate is given (see README "Cost model" for their source)
DEFAULT_RATES = {"eager bf16 (H100)": 7.2, "torch.compile (H100)": 16.8, "goal (H100)": 25.0}


@dataclass
class Counts:
    videos: int = 0
    failed_videos: int = 0
    masklets: dict[str, int] = field(default_factory=lambda: {"manual": 0, "auto": 0})
    empty_masklets: int = 0
    span_frames: int = 0          # annotated frames inside visible spans
    segments: int = 0
    segment_frames: int = 0       # frames the matter processes (window overlap included)

    def add_annotation(self, ann: sav.Annotation, segment_len: int) -> None:
        for j, mid in enumerate(ann.masklet_ids):
            areas = np.array([sav.check_rle(ann.rles[i][j], ann.height, ann.width, ann.path, f"masklet {mid}")
                              for i in range(ann.num_frames)])
            visible = np.flatnonzero(areas > 0)
            self.masklets[ann.source] += 1
            if visible.size == 0:
                self.empty_masklets += 1
                continue
            self.span_frames += int(visible[-1] - visible[0] + 1)
            segs = plan_masklet(ann.video_id, ann.source, mid, areas > 0, segment_len)
            self.segments += len(segs)
            self.segment_frames += sum(s.length for s in segs)


def count_split(split_url: str, cfg: ReaderConfig, limit: int | None = None, progress: bool = True) -> Counts:
    """Count masklets and frames of a split's annotation files (train layout)."""
    counts = Counts()
    refs = list_videos(split_url)[:limit]
    for ref in tqdm(refs, desc="annotations", disable=not progress):
        counts.videos += 1
        try:
            for src in masklet_sources(cfg):
                url = ref.manual_url if src == "manual" else ref.auto_url
                if url is None:
                    continue
                counts.add_annotation(sav.load_annotation(url, src, ref.video_id), cfg.segment_len)
        except SampleError as exc:
            counts.failed_videos += 1
            log.warning("skipping %s", exc)
    return counts


def gpu_hours(frames: int, rate: float) -> float:
    return frames / rate / 3600.0


def report(counts: Counts, rates: dict[str, float], scale: float = 1.0) -> str:
    lines = [
        f"videos: {counts.videos} ({counts.failed_videos} unreadable)",
        f"masklets: manual {counts.masklets['manual']}, auto {counts.masklets['auto']} "
        f"({counts.empty_masklets} empty)",
        f"annotated frames in visible spans: {counts.span_frames}",
        f"segments: {counts.segments}; frames processed (overlap included): {counts.segment_frames} "
        f"(+{100 * (counts.segment_frames / counts.span_frames - 1) if counts.span_frames else 0:.1f}%)",
    ]
    if scale != 1.0:
        lines.append(f"scaled by {scale:g} to the full split: {counts.segment_frames * scale:.0f} frames")
    for name, rate in rates.items():
        lines.append(f"GPU-hours at {rate:g} frames/s per GPU [{name}]: "
                     f"{gpu_hours(counts.segment_frames * scale, rate):,.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, help="split folder under --data-root, e.g. sav_train")
    p.add_argument("--data-root", default="data", help="SA-V root: local path or fsspec URL")
    p.add_argument("--masklets", choices=["manual", "auto", "all"], default="manual", help="which masklets")
    p.add_argument("--segment-len", type=int, default=12, help="annotated frames per segment")
    p.add_argument("--limit-videos", type=int, default=None,
                   help="count only the first N videos (a sample; combine with --scale)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the counted frames by this (e.g. total videos / --limit-videos)")
    p.add_argument("--rate", type=float, action="append", default=None,
                   help="frames/s per GPU to price (repeatable); default: the README's reference rates")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ReaderConfig(masklets=args.masklets, segment_len=args.segment_len)
    counts = count_split(f"{args.data_root.rstrip('/')}/{args.split}", cfg, args.limit_videos)
    rates = {f"--rate {r:g}": r for r in args.rate} if args.rate else DEFAULT_RATES
    print(report(counts, rates, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
