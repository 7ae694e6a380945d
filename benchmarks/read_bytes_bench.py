"""Bytes fetched per video when the reader reads SA-V from object storage: before (plan and read each
opened the video: decord copied the whole mp4 to local disk twice, PyAV demuxed it twice) and after
(one open per video), for both decoders.

A local S3 server (moto, 127.0.0.1) records every request; the bytes of each GET are its ``Range`` (or
the whole object). Each tree reads every video of a small generated split through its reader step
(``read_video``), in a fresh process. Prints bytes per video and their ratio to the mp4's size.

    python -m benchmarks.read_bytes_bench [--videos 3] [--frames 96] [--size 320x180]
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
from pathlib import Path

from benchmarks.trees import BEFORE_EXECUTOR, REPO, export, run_in

BUCKET = "bench"

_READ = r"""
import json, sys
from pipeline.reader import ReaderConfig, list_videos, read_video
refs = list_videos(sys.argv[1])
items = 0
for ref in refs:
    for item in read_video(ref, ReaderConfig(backend=sys.argv[2])):
        items += 1
print("@@RESULT@@" + json.dumps({"videos": len(refs), "items": items}))
"""


def _range_bytes(headers: dict, size: int) -> int:
    rng = {k.lower(): v for k, v in headers.items()}.get("range")
    if not rng:
        return size
    lo, _, hi = rng.removeprefix("bytes=").partition("-")
    start = int(lo) if lo else max(0, size - int(hi))
    end = min(size - 1, int(hi)) if hi and lo else size - 1
    return max(0, end - start + 1)


def measure(server, tree: Path, data_url: str, backend: str, sizes: dict[str, int], env: dict) -> dict:
    """Bytes fetched by ``tree``'s reader for every object of the split (mp4s and JSON apart)."""
    server.recorder("reset-recording")
    server.recorder("start-recording")
    try:
        out = run_in(tree, _READ, f"{data_url}/sav_train", backend, env=env)
    finally:
        server.recorder("stop-recording")
    got: collections.Counter[str] = collections.Counter()
    for e in server.recorded():
        if e["method"] != "GET":
            continue
        key = e["url"].split("?", 1)[0].split(f"/{BUCKET}/", 1)[-1]
        if key in sizes:
            got["mp4" if key.endswith(".mp4") else "json"] += _range_bytes(e.get("headers") or {}, sizes[key])
    return {"videos": out["videos"], "mp4": got["mp4"], "json": got["json"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.read_bytes_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=3, help="videos in the generated split")
    p.add_argument("--frames", type=int, default=96, help="video frames per video (24 fps)")
    p.add_argument("--size", default="320x180", help="video size WxH")
    p.add_argument("--before", default=BEFORE_EXECUTOR, help="the commit measured as 'before'")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import fsspec

    from pipeline import synth
    from tests.s3_server import FAKE_AWS, S3Server

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        specs = synth.make_specs(args.videos, args.frames, seed=0, sizes=[args.size])
        split = synth.generate_split(tmp / "data", specs, "sav_train", gt=False)
        server = S3Server(tmp)
        try:
            env = {**FAKE_AWS, "FSSPEC_S3_ENDPOINT_URL": server.url}
            fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=server.url, key="testing",
                                   secret="testing")
            fs.mkdir(BUCKET)
            fs.put(str(split), f"{BUCKET}/data/sav_train", recursive=True)
            sizes = {str(f.relative_to(tmp)).replace("\\", "/"): f.stat().st_size
                     for f in (tmp / "data").rglob("*") if f.is_file()}
            trees = {"before": export(args.before, tmp / "before"), "after": REPO}
            mp4_total = sum(v for k, v in sizes.items() if k.endswith(".mp4"))
            print(f"{args.videos} videos {args.size}, {args.frames} frames; mp4 {mp4_total / args.videos / 1024:.1f} "
                  f"KiB per video on average; bytes fetched per video from the local S3 server")
            print(f"{'backend':<8} {'tree':<7} {'mp4 KiB/video':>14} {'x mp4 size':>11} {'json KiB/video':>15}")
            for backend in ("decord", "pyav"):
                per = {}
                for name, tree in trees.items():
                    m = measure(server, tree, f"s3://{BUCKET}/data", backend, sizes, env)
                    per[name] = m["mp4"] / max(1, m["videos"])
                    print(f"{backend:<8} {name:<7} {per[name] / 1024:>14.1f} {m['mp4'] / mp4_total:>11.2f} "
                          f"{m['json'] / max(1, m['videos']) / 1024:>15.1f}")
                print(f"{backend:<8} after / before: {per['after'] / max(1, per['before']):.2f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
