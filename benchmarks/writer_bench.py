"""Writer memory: peak RSS of writing one shard, the whole-shard writer (before) vs the streaming one.

``python -m benchmarks.writer_bench`` generates (once, under --workdir) a split of 1080p videos, reads
every segment of them, mattes with alpha = mask and encodes the samples with frames (PNG + JPEG), as
the job's encode tasks do, and stores each encoded sample as a pickle. Then, each in a fresh process:

- baseline: import the writer and read nothing (the floor every process pays);
- before: the writer task of the previous job design, which received all of a shard's encoded
  samples as arguments and then wrote the tar (the samples are loaded into one list, then
  ``write_shard`` of commit 76e3064 — the code before the streaming writer — writes them);
- after: the streaming ShardWriter, which receives one sample at a time and spills it to disk.

It prints each peak RSS, the shard size and (peak - baseline) after / before.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from mava import lifecycle
from pipeline import synth
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments
from pipeline.segments import SegmentData
from pipeline.encode import encode_sample

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "76e3064"   # last commit with the whole-shard writer task


def prepare(workdir: Path, videos: int, frames: int, size: str) -> Path:
    """Encoded samples of one shard as pickles under ``workdir/encoded`` (made once)."""
    enc = workdir / f"encoded-{videos}x{frames}-{size}"
    if enc.is_dir() and any(enc.iterdir()):
        return enc
    data = workdir / f"data-{videos}x{frames}-{size}"
    split = data / "sav_train"
    if not split.is_dir():
        log.info("generating %d videos of %d frames at %s", videos, frames, size)
        specs = synth.make_specs(videos, frames, seed=3, sizes=[size])
        synth.generate_split(data, specs, gt=False, threads=2)
    enc.mkdir(parents=True, exist_ok=True)
    cfg = ReaderConfig()
    n = 0
    for ref in list_videos(str(split)):
        for item in read_segments(plan_video(ref, cfg), cfg):
            if not isinstance(item, SegmentData):
                raise RuntimeError(f"could not read {item.key}: {item.message}")
            sample = encode_sample(item, item.masks.astype("uint8") * 255, "mask", "jpg")
            (enc / f"{n:05d}.pkl").write_bytes(pickle.dumps(sample, protocol=5))
            n += 1
    log.info("%d encoded samples in %s", n, enc)
    return enc


_CHILD = r"""
import pickle, sys, types
from pathlib import Path
mode, enc, out, old_writer = sys.argv[1:5]
files = sorted(Path(enc).glob("*.pkl"))
if mode == "before":
    module = types.ModuleType("old_writer")
    sys.modules["old_writer"] = module
    exec(compile(Path(old_writer).read_text(), "old_writer.py", "exec"), module.__dict__)
    samples = [pickle.loads(p.read_bytes()) for p in files]     # the task's arguments: the whole shard
    module.write_shard(out, "sav_train", 0, samples, [])
elif mode == "after":
    from pipeline.writer import ShardWriter
    w = ShardWriter(out, "sav_train", 0)
    for p in files:                                              # samples arrive one by one
        w.add(pickle.loads(p.read_bytes()))
    w.commit()
else:
    from pipeline import writer  # noqa: F401  (import cost only)
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report its parent's peak
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def peak_rss(mode: str, enc: Path, out: Path, old_writer: Path) -> int:
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, str(enc), str(out), str(old_writer)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.writer_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--workdir", type=Path, default=Path("build/bench/writer"), help="generated data and outputs")
    p.add_argument("--videos", type=int, default=8, help="videos in the shard")
    p.add_argument("--frames", type=int, default=96, help="video frames per video (24 fps; 1 in 4 annotated)")
    p.add_argument("--size", default="1920x1080", help="video size WxH")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    enc = prepare(args.workdir, args.videos, args.frames, args.size)
    old = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:pipeline/writer.py"],
                         capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        old_writer = Path(tmp) / "old_writer.py"
        old_writer.write_text(old)
        rss = {mode: peak_rss(mode, enc, Path(tmp) / mode, old_writer) for mode in ("baseline", "before", "after")}
        tar = Path(tmp) / "after" / "shards" / "sav_train-000000.tar"
        same = tar.read_bytes() == (Path(tmp) / "before" / "shards" / "sav_train-000000.tar").read_bytes()
        size = tar.stat().st_size
    mib = 1 << 20
    n = len(list(enc.glob("*.pkl")))
    print(f"one shard: {args.videos} videos at {args.size}, {n} samples with frames, tar {size / mib:.1f} MiB "
          f"(before and after byte-identical: {same})")
    print(f"peak RSS  baseline (imports only) {rss['baseline'] / mib:8.1f} MiB")
    print(f"peak RSS  before (whole shard)    {rss['before'] / mib:8.1f} MiB   (+{(rss['before'] - rss['baseline']) / mib:.1f})")
    print(f"peak RSS  after (streaming)       {rss['after'] / mib:8.1f} MiB   (+{(rss['after'] - rss['baseline']) / mib:.1f})")
    extra_before = max(1, rss["before"] - rss["baseline"])
    print(f"writer memory above the floor, after / before: {(rss['after'] - rss['baseline']) / extra_before:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
