"""End-to-end job throughput with the ``mask`` matter against the reader alone (pipeline overhead).

    python -m benchmarks.pipeline_bench [--videos 16] [--frames 384] [--size 480x270]

Prints segments/s of (a) the reader alone in this process (plan + decode + segment every video),
(b) the same work plus the writer's PNG/JPEG encoding, serially in this process, and (c) the whole
Ray job (readers -> mask matter actor -> encode tasks -> shard writer, wall time incl. worker start),
all over the same generated split in the same run, and the ratios of (c) to (a) and (b).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from mava import lifecycle, schema
from pipeline import run, synth
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments
from pipeline.segments import SegmentData
from pipeline.encode import encode_sample
from models.base import to_uint8


def reader_alone(split_dir: Path, cfg: ReaderConfig, encode: str | None = None) -> tuple[int, int, float]:
    """Segments, frames and seconds of reading the split in this process (and encoding, if asked)."""
    t0 = time.perf_counter()
    segs = frames = 0
    for ref in list_videos(str(split_dir)):
        for item in read_segments(plan_video(ref, cfg), cfg):
            if isinstance(item, SegmentData):
                segs += 1
                frames += item.masks.shape[0]
                if encode is not None:
                    encode_sample(item, to_uint8(item.masks.astype("float32")), "mask", encode)
    return segs, frames, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.pipeline_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--videos", type=int, default=16, help="synthetic videos")
    p.add_argument("--frames", type=int, default=384, help="video frames per video (24 fps)")
    p.add_argument("--size", default="480x270", help="WxH of the videos")
    p.add_argument("--frames-mode", default="jpg", choices=["jpg", "none"], help="store frames as JPEG or not")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synth.main(["--out", str(data), "--videos", str(args.videos), "--frames", str(args.frames),
                    "--sizes", args.size])
        split = data / "sav_train"
        segs, frames, secs = reader_alone(split, ReaderConfig())
        _, _, serial_secs = reader_alone(split, ReaderConfig(), encode=args.frames_mode)
        code = run.main(["--split", "sav_train", "--data-root", str(data), "--out", f"{tmp}/out",
                         "--matter", "mask", "--address", "local", "--videos-per-shard", "2",
                         "--frames", args.frames_mode, "--no-progress", "--log-level", "WARNING"])
        summary = json.loads(Path(f"{tmp}/out/sav_train/{schema.RUN_JSON}").read_text())["summary"]
        assert code == 0 and summary["samples_ok"] == segs, (code, summary, segs)
    r_rate = segs / secs
    s_rate = segs / serial_secs
    p_rate = segs / summary["wall_s"]
    print(f"split: {args.videos} videos x {args.frames} frames at {args.size}; {segs} segments, {frames} frames")
    print(f"reader alone (1 process):       {r_rate:8.2f} segments/s  ({frames / secs:.1f} annotated frames/s)")
    print(f"Ray job, mask matter, --frames {args.frames_mode}: {p_rate:8.2f} segments/s  "
          f"({summary['frames_per_s']} frames/s, actor utilisation {summary['actor_utilisation']})")
    print(f"read + mask + encode serially (1 process): {s_rate:8.2f} segments/s (the job's work, no Ray)")
    print(f"ratio job / reader alone:       {p_rate / r_rate:8.2f}")
    print(f"ratio job / serial equivalent:  {p_rate / s_rate:8.2f}  (>1: Ray's parallelism beats its overhead)")


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
