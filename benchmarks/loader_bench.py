"""Loader throughput: streaming and random-access MA-V loaders vs plain WebDataset iteration.

    python -m benchmarks.loader_bench [--dir <out>/<split>] [--clip-len 8] [--size 256 256]

Without --dir, generates the data the way users get it: ``pipeline.synth`` writes a small SA-V-style
split, then the real job (``pipeline.run``, local Ray cluster, a CPU matter) writes MA-V shards.
Prints clips/s of each loader, the ratio to plain webdataset iteration over the same shards (raw
bytes, and with decode("pil") of every member), and bytes read per sample by the random-access path.
All figures are measured in the same run, single process (num_workers=0) unless --workers is given,
with --torch-threads intra-op threads (default 1, as in a DataLoader worker).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from mava import folder, lifecycle
from mava import manifest as mf
from mava.loaders import ClipConfig, RandomAccessClips, StreamingClips

log = logging.getLogger("benchmarks.loader_bench")


def _rate(it, limit: int | None = None) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
        if limit and n >= limit:
            break
    return n / (time.perf_counter() - t0), n


def _loader(ds, workers: int, **kw):
    if workers == 0:
        return ds
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, **kw)


def generate(root: Path, args: argparse.Namespace) -> str:
    """pipeline.synth split -> pipeline.run (local Ray) -> ``root/out/sav_train``; returns that folder."""
    import ray

    from pipeline import run, synth

    data = root / "data"
    synth.main(["--out", str(data), "--videos", str(args.videos), "--frames", str(args.video_frames),
                "--sizes", args.video_size])
    t0 = time.perf_counter()
    code = run.main(["--split", "sav_train", "--data-root", str(data), "--out", str(root / "out"),
                     "--matter", args.matter, "--address", "local", "--videos-per-shard", "2",
                     "--no-progress", "--log-level", "WARNING"])
    ray.shutdown()  # no Ray workers left around while the loaders (and their DataLoader workers) run
    if code != 0:
        raise SystemExit(f"pipeline.run failed with exit code {code}")
    print(f"generated: pipeline.run --matter {args.matter} took {time.perf_counter() - t0:.1f} s")
    return str(root / "out" / "sav_train")


def main(argv: list[str] | None = None) -> None:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.loader_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--dir", help="an existing split folder (path or fsspec URL); default: generate one")
    p.add_argument("--videos", type=int, default=6, help="generated split: synthetic videos (3 objects each)")
    p.add_argument("--video-frames", type=int, default=96, help="generated split: video frames per video (24 fps; "
                   "one annotated frame in 4)")
    p.add_argument("--video-size", default="480x270", help="generated split: WxH of the videos")
    p.add_argument("--matter", default="guided", help="generated split: CPU matter of the job (guided, mask, ...)")
    p.add_argument("--clip-len", type=int, default=8, help="frames per clip")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), help="output clip size H W")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in process)")
    p.add_argument("--repeats", type=int, default=2, help="passes over the split per measurement (best kept)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads in this process (DataLoader workers always use 1); more threads "
                        "on a busy machine make the small per-clip tensor ops several times slower")
    args = p.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING)

    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="loader_bench_")
        args.dir = generate(Path(tmp.name), args)
    split = folder.as_split(args.dir)
    urls = [split.url_of(x) for x in split.shard_files()]
    rows = mf.ok_rows(split)
    print(f"split {args.dir}: {len(urls)} shards, {len(rows)} ok samples, "
          f"{rows[0]['num_frames']} frames of {rows[0]['width']}x{rows[0]['height']} per sample")
    cfg = ClipConfig(clip_len=args.clip_len, size=tuple(args.size), crop_scale=(0.5, 1.0), hflip=0.5)

    def best(make):
        return max(_rate(make())[0] for _ in range(args.repeats))

    raw = best(lambda: _loader(wds.WebDataset(urls, shardshuffle=False), args.workers))
    dec = best(lambda: _loader(wds.WebDataset(urls, shardshuffle=False).decode("pil"), args.workers))
    stream = best(lambda: _loader(StreamingClips(split, cfg, shuffle_buffer=8), args.workers))
    ra_ds = RandomAccessClips(split, cfg)
    order = np.random.default_rng(0).permutation(len(ra_ds)).tolist()

    def ra_iter():
        if args.workers == 0:
            return (ra_ds[i] for i in order)
        return torch.utils.data.DataLoader(ra_ds, batch_size=None, num_workers=args.workers,
                                           sampler=order)

    ra = best(ra_iter)
    probe = RandomAccessClips(split, cfg)
    for i in range(len(probe)):
        probe.raw(i)
    per_sample = probe.bytes_read / len(probe)
    payload = 0
    for i in range(len(probe)):
        payload += sum(len(v) for v in probe.raw(i).values())
    payload /= len(probe)
    tar_total = sum(split.size(x) for x in split.shard_files())

    print(f"plain webdataset (raw bytes)       {raw:8.1f} samples/s")
    print(f"plain webdataset (decode 'pil')    {dec:8.1f} samples/s   (baseline)")
    print(f"streaming clips   (clip {args.clip_len}, {args.size[0]}x{args.size[1]}) {stream:8.1f} clips/s  "
          f"ratio {stream / dec:.2f} vs decode, {stream / raw:.3f} vs raw")
    print(f"random-access clips                {ra:8.1f} clips/s  "
          f"ratio {ra / dec:.2f} vs decode, {ra / stream:.2f} vs streaming")
    print(f"random access bytes read per sample: {per_sample / 1024:.1f} KiB "
          f"(member data {payload / 1024:.1f} KiB, overhead {per_sample / payload - 1:.1%}; "
          f"whole tar / samples = {tar_total / len(probe) / 1024:.1f} KiB)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
