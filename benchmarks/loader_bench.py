"""Loader throughput: streaming and random-access MA-V loaders vs plain WebDataset iteration.

    python -m benchmarks.loader_bench [--dir <out>/<split>] [--clip-len 8] [--size 256 256]

Prints clips/s of each loader, the ratio to plain webdataset iteration over the same shards (raw
bytes, and with decode("pil") of every member), and bytes read per sample by the random-access path.
All figures are measured in the same run, single process (num_workers=0) unless --workers is given.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="an existing split folder (path or fsspec URL); default: generate one")
    p.add_argument("--videos", type=int, default=6, help="generated split: videos (2 masklets each)")
    p.add_argument("--height", type=int, default=270, help="generated split: frame height")
    p.add_argument("--width", type=int, default=480, help="generated split: frame width")
    p.add_argument("--clip-len", type=int, default=8, help="frames per clip")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), help="output clip size H W")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in process)")
    p.add_argument("--repeats", type=int, default=2, help="passes over the split per measurement (best kept)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    tmp = None
    if args.dir is None:
        from tests.mava_fixtures import build  # the real shard writer with a CPU matter

        tmp = tempfile.TemporaryDirectory(prefix="loader_bench_")
        split_dir, _ = build(Path(tmp.name), videos=args.videos, masklets=2, h=args.height, w=args.width,
                             ann=24, seg_len=12, videos_per_shard=2)
        args.dir = str(split_dir)
    split = mf.as_split(args.dir)
    urls = [split.fs.unstrip_protocol(x) for x in split.shard_files()]
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
    tar_total = sum(split.fs.size(x) for x in split.shard_files())

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
    main()
