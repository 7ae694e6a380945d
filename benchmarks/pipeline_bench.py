"""End-to-end job throughput with the ``mask`` matter against the reader alone (pipeline overhead).

    python -m benchmarks.pipeline_bench [--videos 8] [--frames 192] [--size 480x270]

Prints segments/s of (a) the reader alone in this process (plan + decode + segment every video) and
(b) the whole Ray job (readers -> mask matter actor -> PNG/JPEG encode -> shard writer), both over
the same generated split in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from mava import schema
from pipeline import run, synth
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments
from pipeline.segments import SegmentData


def reader_alone(split_dir: Path, cfg: ReaderConfig) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    segs = frames = 0
    for ref in list_videos(str(split_dir)):
        for item in read_segments(plan_video(ref, cfg), cfg):
            if isinstance(item, SegmentData):
                segs += 1
                frames += item.masks.shape[0]
    return segs, frames, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8, help="synthetic videos")
    p.add_argument("--frames", type=int, default=192, help="video frames per video (24 fps)")
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
        code = run.main(["--split", "sav_train", "--data-root", str(data), "--out", f"{tmp}/out",
                         "--matter", "mask", "--address", "local", "--videos-per-shard", "2",
                         "--frames", args.frames_mode, "--no-progress", "--log-level", "WARNING"])
        summary = json.loads(Path(f"{tmp}/out/sav_train/{schema.RUN_JSON}").read_text())["summary"]
        assert code == 0 and summary["samples_ok"] == segs, (code, summary, segs)
    r_rate = segs / secs
    p_rate = segs / summary["wall_s"]
    print(f"split: {args.videos} videos x {args.frames} frames at {args.size}; {segs} segments, {frames} frames")
    print(f"reader alone (1 process):       {r_rate:8.2f} segments/s  ({frames / secs:.1f} annotated frames/s)")
    print(f"Ray job, mask matter, --frames {args.frames_mode}: {p_rate:8.2f} segments/s  "
          f"({summary['frames_per_s']} frames/s, actor utilisation {summary['actor_utilisation']})")
    print(f"ratio job / reader alone:       {p_rate / r_rate:8.2f}")


if __name__ == "__main__":
    main()
