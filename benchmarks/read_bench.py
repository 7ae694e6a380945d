"""Reader benchmark: throughput per core against raw decord, and peak RSS short vs long video.

``python -m benchmarks.read_bench`` generates (once, under --workdir) a 848x480 SA-V-like video and two
1080p videos (short and long), then prints:

- annotated frames/s per core of ``read_segments`` (plan + decode + masks) for each backend, and of
  raw ``decord.VideoReader.get_batch`` on the annotated frames of the same video, with the ratio;
- peak RSS of reading every segment of the short and the long 1080p video, each in a fresh
  subprocess, and the long/short ratio (near 1 = memory bounded by segments, not video length).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from mava import lifecycle
from pipeline import synth
from pipeline.protocol import Failure
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments

log = logging.getLogger(__name__)
BACKENDS = ("decord", "pyav")


def _ensure(workdir: Path, name: str, spec: synth.VideoSpec) -> Path:
    split = workdir / name / "sav_train"
    if not (split / "sav_000" / f"{spec.video_id}.mp4").exists():
        log.info("generating %s (%dx%d, %d frames)", name, spec.width, spec.height, spec.num_frames)
        synth.generate_split(workdir / name, [spec], gt=False, threads=2)
    return split


def read_all(split: Path, backend: str, masklets: str = "manual") -> tuple[int, float]:
    """(annotated frames delivered, seconds) for reading every segment of every video."""
    cfg = ReaderConfig(masklets=masklets, backend=backend, threads=1)
    n, t0 = 0, time.perf_counter()
    for ref in list_videos(str(split)):
        plan = plan_video(ref, cfg)
        for item in read_segments(plan, cfg):
            if isinstance(item, Failure):
                raise RuntimeError(item.error)
            n += item.frames.shape[0]
    return n, time.perf_counter() - t0


def raw_decord(split: Path) -> tuple[int, float]:
    import decord

    mp4 = next(split.rglob("*.mp4"))
    t0 = time.perf_counter()
    vr = decord.VideoReader(str(mp4), num_threads=1)
    idx = list(range(0, len(vr), 4))
    n = 0
    for k in range(0, len(idx), 12):  # same batch size as a segment
        n += vr.get_batch(idx[k:k + 12]).shape[0]
    return n, time.perf_counter() - t0


def _child(split: str, backend: str) -> None:
    n, secs = read_all(Path(split), backend)
    # VmHWM, not ru_maxrss: ru_maxrss survives fork+exec, so a child would report its parent's peak
    with open("/proc/self/status") as f:
        rss_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"frames": n, "seconds": secs, "peak_rss_mb": rss_mb}))


def _rss(split: Path, backend: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.read_bench", "--child", str(split), backend],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.read_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--workdir", type=Path, default=Path("build/bench_read"),
                   help="where generated videos are kept between runs (default build/bench_read)")
    p.add_argument("--frames", type=int, default=480, help="frames of the 848x480 throughput video (default 480)")
    p.add_argument("--short-frames", type=int, default=720,
                   help="frames of the short 1080p video (default 720: past the decoders' ~25 s warm-up of buffers)")
    p.add_argument("--long-frames", type=int, default=2400, help="frames of the long 1080p video (default 2400)")
    p.add_argument("--long-size", default="1920x1080", help="WxH of the short/long RSS videos (default 1920x1080)")
    p.add_argument("--skip-rss", action="store_true", help="only measure throughput")
    p.add_argument("--child", nargs=2, metavar=("SPLIT", "BACKEND"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(*a.child)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    bg = str(synth.DEFAULT_BG) if synth.DEFAULT_BG.exists() else ""
    tp = _ensure(a.workdir, f"tp_{a.frames}", synth.VideoSpec("sav_000001", 480, 848, a.frames, 1, bg, crf=18))

    print(f"read throughput, 848x480 portrait, {a.frames} frames, 3 manual masklets, 1 decoder thread:")
    rn, rs = raw_decord(tp)
    raw = rn / rs
    print(f"  raw decord get_batch (each annotated frame once): {raw:8.1f} annotated frames/s per core")
    for b in BACKENDS:
        read_all(tp, b)  # warm file cache
        n, s = read_all(tp, b)
        print(f"  reader[{b:6s}] (all masklets, incl. masks): {n / s:8.1f} annotated frames/s per core "
              f"= {n / s / raw:.2f}x raw decord ({n} frames in {s:.1f}s)")

    if a.skip_rss:
        return
    w, h = synth.parse_size(a.long_size)
    short = _ensure(a.workdir, f"short_{w}x{h}_{a.short_frames}",
                    synth.VideoSpec("sav_000001", w, h, a.short_frames, 2, simple=True, crf=23, preset="ultrafast"))
    long = _ensure(a.workdir, f"long_{w}x{h}_{a.long_frames}",
                   synth.VideoSpec("sav_000001", w, h, a.long_frames, 2, simple=True, crf=23, preset="ultrafast"))
    print(f"peak RSS reading every segment, {w}x{h}, fresh process each:")
    for b in BACKENDS:
        s_, l_ = _rss(short, b), _rss(long, b)
        print(f"  {b:6s}: short ({a.short_frames} frames) {s_['peak_rss_mb']:7.1f} MB, "
              f"long ({a.long_frames} frames) {l_['peak_rss_mb']:7.1f} MB, ratio long/short "
              f"{l_['peak_rss_mb'] / s_['peak_rss_mb']:.2f}  (long read at {l_['frames'] / l_['seconds']:.1f} ann. frames/s)")


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
