"""``python -m pipeline.cost``: GPU-hours to matte a split, counted from its annotation files.

Reads only the masklet JSON files (no video is opened) and plans each video with the reader's own
planning (:func:`pipeline.reader.plan_from_annotations`, the same per-masklet step as the job), so
the counts are what the job plans: masklets, annotated frames inside each planned masklet's visible
span, and the frames the matter actually processes (segments, overlap included); failed videos and
masklets are counted by error type. The video's size, frame count and fps are those its JSON
declares, and a video file is only checked to exist: a video that cannot be decoded, or whose real
size, length or fps differ from its JSON, is the one case where the job's plan differs.
GPU-hours = processed frames / (frames/s per GPU) / 3600, for each rate given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from mava import lifecycle
from pipeline import sav
from pipeline.errors import EmptyMasklet, InputError
from pipeline.reader import ReaderConfig, VideoPlan, list_videos, plan_from_annotations

log = logging.getLogger("pipeline.cost")

#: frames/s per GPU at 1024x576 used when no --rate is given (see README "Cost model" for their source)
DEFAULT_RATES = {"eager bf16 (H100)": 7.2, "torch.compile (H100)": 16.8, "goal (H100)": 25.0}


@dataclass
class Counts:
    videos: int = 0
    failed_videos: int = 0        # videos the job fails as a whole (one failed row each)
    masklets: dict[str, int] = field(default_factory=lambda: {"manual": 0, "auto": 0})  # of planned videos
    empty_masklets: int = 0
    failed_masklets: int = 0      # masklets failed for another reason (an RLE of the wrong size, ...)
    span_frames: int = 0          # annotated frames inside visible spans
    segments: int = 0
    segment_frames: int = 0       # frames the matter processes (window overlap included)
    video_errors: Counter = field(default_factory=Counter)    # error type -> failed videos
    masklet_errors: Counter = field(default_factory=Counter)  # error type -> failed masklets

    def add_plan(self, plan: VideoPlan) -> None:
        """Count one planned video."""
        self.videos += 1
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for s in plan.segments:
            lo, hi = spans.get((s.source, s.masklet_id), (s.start, s.start + s.length))
            spans[(s.source, s.masklet_id)] = (min(lo, s.start), max(hi, s.start + s.length))
            self.segments += 1
            self.segment_frames += s.length
        self.span_frames += sum(hi - lo for lo, hi in spans.values())
        for src, _ in spans:
            self.masklets[src] += 1
        for f in plan.failures:
            self.masklets[f.ids()["source"]] += 1
            self.masklet_errors[f.error_type] += 1
            if f.error_type == EmptyMasklet.__name__:
                self.empty_masklets += 1
            else:
                self.failed_masklets += 1

    def add_failed_video(self, error: InputError) -> None:
        """Count a video the job fails as a whole."""
        self.videos += 1
        self.failed_videos += 1
        self.video_errors[error.error_type] += 1


def count_split(split_url: str, cfg: ReaderConfig, limit: int | None = None, progress: bool = True) -> Counts:
    """Count what the job plans for a split (train layout), from its annotation files."""
    counts = Counts()
    refs = list_videos(split_url)[:limit]
    if any(r.layout != sav.LAYOUT_TRAIN for r in refs):
        raise ValueError(f"{split_url}: the cost model reads train-layout splits (mp4 + JSON) only")
    for ref in tqdm(refs, desc="annotations", disable=not progress):
        try:
            plan = plan_from_annotations(ref, cfg)
        except InputError as exc:
            counts.add_failed_video(exc)
            log.warning("skipping %s", exc)
            continue
        counts.add_plan(plan)
    return counts


def gpu_hours(frames: int, rate: float) -> float:
    return frames / rate / 3600.0


def report(counts: Counts, rates: dict[str, float], scale: float = 1.0) -> str:
    lines = [
        f"videos: {counts.videos} ({counts.failed_videos} unreadable)",
        f"masklets: manual {counts.masklets['manual']}, auto {counts.masklets['auto']} "
        f"({counts.empty_masklets} empty, {counts.failed_masklets} failed)",
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
    p = lifecycle.OneLineParser(prog="python -m pipeline.cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback (unreadable "
                                                            "annotations are counted, not fatal)"))
    p.add_argument("--split", required=True, help="split folder under --data-root, e.g. sav_train")
    p.add_argument("--data-root", default="data", help="SA-V root: local path or fsspec URL")
    p.add_argument("--masklets", choices=["manual", "auto", "all"], default="manual", help="which masklets")
    p.add_argument("--segment-len", type=int, default=12, help="annotated frames per segment")
    p.add_argument("--stride", type=int, default=0,
                   help="annotated frames between window starts (the job's --stride; 0 = --segment-len)")
    p.add_argument("--limit-videos", type=int, default=None,
                   help="count only the first N videos (a sample; combine with --scale)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the counted frames by this (e.g. total videos / --limit-videos)")
    p.add_argument("--rate", type=float, action="append", default=None,
                   help="frames/s per GPU to price (repeatable); default: the README's reference rates")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, v in (("--segment-len", args.segment_len), ("--limit-videos", args.limit_videos),
                    ("--scale", args.scale), *(("--rate", r) for r in args.rate or ())):
        if v is not None and v <= 0:
            p.error(f"{name} must be positive, not {v:g}")
    try:
        cfg = ReaderConfig(masklets=args.masklets, segment_len=args.segment_len, stride=args.stride)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return lifecycle.EXIT_USAGE
    split_url = f"{args.data_root.rstrip('/')}/{args.split}"
    try:
        counts = count_split(split_url, cfg, args.limit_videos)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return lifecycle.EXIT_USAGE
    if not counts.videos:
        print(f"error: no videos found in {split_url}", file=sys.stderr)
        return lifecycle.EXIT_USAGE
    rates = {f"--rate {r:g}": r for r in args.rate} if args.rate else DEFAULT_RATES
    print(report(counts, rates, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
