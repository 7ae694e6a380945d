"""The driver at SA-V scale: a split of many tiny videos through the real job (``pipeline.run``: real
readers, encoders and shard writers on a local Ray cluster) with a sleep matter on several fake-GPU
actors, before (the executor of commit 8a77995: the driver routes every chunk, two tasks and a stream item
per chunk) and after (one video task per video: the driver sees a header and an outcome per video).

Reports, per tree, from two split sizes run in the same benchmark (the difference removes fixed costs
such as starting Ray):

- driver CPU-seconds per segment (the driver process's CPU time, all its threads);
- peak driver RSS, and its growth per 100 shards done (sampled while the run goes);
- peak object-store use;
- the largest GPU count one driver keeps fed at 25 annotated frames/s (12-frame segments), and the time
  to run all of SA-V (1.4M segments) on 64 and 512 GPUs;
- the cost of one round of the scheduling loop's wait with as many video tasks in flight as 16, 128 and
  512 GPUs keep (the per-segment figures come from a few actors, where that cost is small): waiting on
  the task streams themselves (before) and on the refs of their next items (after).

    python -m benchmarks.driver_bench [--videos 150 450] [--actors 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.trees import REPO, export, run_in

SAV_SEGMENTS = 1_400_000     # DESIGN.md: ~1.4M 12-frame segments in SA-V
GPU_SEGMENTS_PER_S = 25 / 12  # one GPU at 25 annotated frames/s
WAIT_PROBE_TASKS = (48, 384, 1536)   # video tasks in flight on 16, 128 and 512 GPUs
#: the executor before video tasks (per-chunk driver work; issue 16's first rounds landed there)
BEFORE_DRIVER = "8a77995"

SLEEP_MATTER = '''"""alpha = mask after a sleep: the GPU's time, without a GPU (benchmark only)."""
import os, time
import numpy as np
from models.base import MatterBase


class SleepMatter(MatterBase):
    name = "sleep"

    def __init__(self, config):
        self.delay = float(os.environ.get("MAVA_BENCH_SLEEP", "0.002"))

    def refine(self, frames, masks):
        time.sleep(self.delay)
        return masks.astype(np.float32)
'''

_IDLE = r"""
import json, sys, time, ray
ray.init(address="local", num_cpus=int(sys.argv[1]), num_gpus=int(sys.argv[2]), include_dashboard=False)
time.sleep(5)
c0, w0 = time.process_time(), time.monotonic()
time.sleep(float(sys.argv[3]))
print("@@RESULT@@" + json.dumps({"cpu_per_s": (time.process_time() - c0) / (time.monotonic() - w0)}))
"""

_WAIT_PROBE = r"""
import json, sys, time, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

@ray.remote(num_returns="streaming", resources={"nowhere": 1})   # never scheduled: in flight for good
def video():
    yield 1

out = {}
for n in map(int, sys.argv[1:]):
    gens = [video.remote() for _ in range(n)]
    refs = [g._get_next_ref_n(1)[0] for g in gens]
    for name, waitables in (("streams", gens), ("next_refs", refs)):
        t, rounds = time.thread_time(), 20
        for _ in range(rounds):
            ray.wait(waitables, num_returns=len(waitables), timeout=0, fetch_local=False)
        out.setdefault(name, {})[n] = (time.thread_time() - t) / rounds
    for g in gens:
        ray.cancel(g)
print("@@RESULT@@" + json.dumps(out))
"""

_DRIVER = r"""
import json, os, re, sys, threading, time
argv, out_split = json.loads(sys.argv[1]), sys.argv[2]
samples, stop, sampler_cpu = [], threading.Event(), [0.0]

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def plasma_mib():
    import ray
    if not ray.is_initialized():
        return None
    from ray._private.internal_api import memory_summary
    try:
        s = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception:
        return None
    m = re.search(r"Plasma memory usage (\d+) MiB", s)
    return int(m.group(1)) if m else None

def sample():
    while not stop.wait(5.0):
        t = time.thread_time()
        done_dir = os.path.join(out_split, "done")
        done = len(os.listdir(done_dir)) if os.path.isdir(done_dir) else 0
        samples.append((status("VmRSS"), done, plasma_mib()))
        sampler_cpu[0] += time.thread_time() - t

threading.Thread(target=sample, daemon=True).start()
cpu0, main0 = time.process_time(), time.thread_time()
from pipeline.run import main
rc = main(argv)
cpu = time.process_time() - cpu0 - sampler_cpu[0]
main_cpu = time.thread_time() - main0
stop.set()
run = json.load(open(os.path.join(out_split, "run.json")))
s = run["summary"]
segments = s["samples_ok"] + sum(s["samples_failed"].values())
print("@@RESULT@@" + json.dumps({"rc": rc, "cpu_s": cpu, "main_cpu_s": main_cpu, "segments": segments,
                                 "shards": s["shards_done"], "wall_s": s["wall_s"], "peak_rss": status("VmHWM"),
                                 "samples": samples}))
"""


def make_split(root: Path, n_videos: int, frames: int, size: str) -> Path:
    """``n_videos`` tiny videos: 4 generated ones, each copied (hard links) under new ids."""
    from pipeline import sav, synth

    seed = synth.generate_split(root / "seed", synth.make_specs(4, frames, seed=0, sizes=[size]), "sav_train",
                                flat=True, gt=False)
    split = root / "data" / "sav_train"
    for i in range(n_videos):
        src = f"sav_{i % 4 + 1:06d}"
        vid = f"sav_{i + 1:06d}"
        folder = split / f"sav_{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"{vid}.mp4"
        if not dst.exists():
            dst.hardlink_to(seed / f"{src}.mp4")
        doc = json.loads((seed / f"{src}{sav.MANUAL_SUFFIX}").read_text())
        doc["video_id"] = vid
        (folder / f"{vid}{sav.MANUAL_SUFFIX}").write_text(json.dumps(doc))
    return split


def run_tree(tree: Path, data: Path, out: Path, matter_dir: Path, actors: int, sleep: float) -> dict:
    if out.exists():
        shutil.rmtree(out)
    argv = ["--split", "sav_train", "--data-root", str(data), "--out", str(out), "--matter",
            "mava_bench_sleep:SleepMatter", "--address", "local", "--num-cpus", str(actors * 2),
            "--num-gpus", str(actors), "--videos-per-shard", "8", "--frames", "none", "--no-progress",
            "--log-level", "WARNING"]
    res = run_in(tree, _DRIVER, json.dumps(argv), str(out / "sav_train"), env={"MAVA_BENCH_SLEEP": str(sleep)},
                 path=(matter_dir,))
    if res["rc"] != 0:
        raise RuntimeError(f"the job failed in {tree} (exit {res['rc']})")
    return res


def rss_growth_per_100_shards(samples: list) -> float | None:
    """Least-squares slope of RSS (MiB) against shards done, over the run's second half."""
    pts = [(d, r / 2**20) for r, d, _ in samples[len(samples) // 2:] if r]
    if len(pts) < 3 or len({d for d, _ in pts}) < 2:
        return None
    n = len(pts)
    mx, my = sum(d for d, _ in pts) / n, sum(r for _, r in pts) / n
    sxx = sum((d - mx) ** 2 for d, _ in pts)
    return 100 * sum((d - mx) * (r - my) for d, r in pts) / sxx if sxx else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.driver_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, nargs=2, default=[150, 450], metavar=("SMALL", "LARGE"),
                   help="the two split sizes (videos); the difference gives the per-segment figures")
    p.add_argument("--actors", type=int, default=8, help="fake-GPU matter actors")
    p.add_argument("--sleep", type=float, default=0.002, help="seconds the sleep matter takes per segment")
    p.add_argument("--frames", type=int, default=336, help="video frames per tiny video (24 fps; SA-V's videos "
                                                         "average about 14 s, ~26 segments each)")
    p.add_argument("--size", default="96x64", help="tiny video size WxH")
    p.add_argument("--before", default=BEFORE_DRIVER, help="the commit measured as 'before'")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and outputs here (default: a temp dir)")
    p.add_argument("--only", choices=("before", "after"), default=None, help="measure one tree only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp_ctx = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else args.workdir
    try:
        matter_dir = work / "matter"
        matter_dir.mkdir(parents=True, exist_ok=True)
        (matter_dir / "mava_bench_sleep.py").write_text(SLEEP_MATTER)
        trees = {"before": export(args.before, work / "before"), "after": REPO}
        if args.only:
            trees = {args.only: trees[args.only]}
        results: dict[str, list[dict]] = {}
        for n in args.videos:
            data = make_split(work / f"split{n}", n, args.frames, args.size).parent
            for name, tree in trees.items():
                r = run_tree(tree, data, work / f"out_{name}_{n}", matter_dir, args.actors, args.sleep)
                results.setdefault(name, []).append(r)
                print(f"{name:<6} {n:>5} videos: {r['segments']:>6} segments in {r['shards']:>4} shards, driver "
                      f"{r['cpu_s']:7.1f} CPU-s ({r['main_cpu_s']:.1f} in its Python thread), wall "
                      f"{r['wall_s']:6.1f} s, peak RSS {r['peak_rss'] / 2**20:6.0f} MiB", flush=True)
        print()
        print(f"{'':<7}{'CPU ms/segment':>15}{'GPUs fed':>10}{'RSS MiB':>9}{'MiB/100 shards':>15}"
              f"{'plasma MiB':>11}{'SA-V on 64 GPUs':>17}{'on 512 GPUs':>13}")
        # a Ray driver burns some CPU per second while idle (gRPC, heartbeats): on this loaded 2-core machine
        # the larger run also lasts longer, which a fast cluster would not; that share is not per segment
        idle = run_in(REPO, _IDLE, str(args.actors * 2), str(args.actors), "20")["cpu_per_s"]
        print(f"an idle Ray driver uses {idle * 1e3:.1f} ms of CPU per second (subtracted for the longer run's "
              "extra wall time)")
        per_seg = {}
        for name, (small, large) in results.items():
            raw = (large["cpu_s"] - small["cpu_s"]) / max(1, large["segments"] - small["segments"])
            c = (large["cpu_s"] - small["cpu_s"] - idle * (large["wall_s"] - small["wall_s"])) / max(
                1, large["segments"] - small["segments"])
            print(f"{name}: {raw * 1e3:.3f} ms/segment before subtracting idle time, "
                  f"{(large['main_cpu_s'] - small['main_cpu_s']) / max(1, large['segments'] - small['segments']) * 1e3:.3f}"
                  " ms in the driver's Python thread")
            per_seg[name] = c
            fed = (1 / c) / GPU_SEGMENTS_PER_S if c > 0 else float("inf")
            growth = rss_growth_per_100_shards(large["samples"])
            plasma = max((s[2] for s in large["samples"] if s[2] is not None), default=None)

            def hours(gpus: int) -> str:
                rate = min(gpus * GPU_SEGMENTS_PER_S, 1 / c if c > 0 else float("inf"))
                return f"{SAV_SEGMENTS / rate / 3600:.1f} h"
            print(f"{name:<7}{c * 1e3:>15.3f}{fed:>10.0f}{large['peak_rss'] / 2**20:>9.0f}"
                  f"{'-' if growth is None else f'{growth:.1f}':>15}{'-' if plasma is None else plasma:>11}"
                  f"{hours(64):>17}{hours(512):>13}")
        # the loop waits on every video task in flight each round: what that costs at scale (read_ahead 2
        # plus one finishing per actor: 3 streams per GPU); before: on the streams, after: on their next refs
        probe = run_in(REPO, _WAIT_PROBE, *map(str, WAIT_PROBE_TASKS))
        print("\none wait round of the scheduling loop, by video tasks in flight (GPUs x 3):")
        for n in WAIT_PROBE_TASKS:
            print(f"  {n:>5} tasks ({n // 3:>4} GPUs): on the streams {probe['streams'][str(n)] * 1e3:6.2f} ms, "
                  f"on their next items' refs {probe['next_refs'][str(n)] * 1e3:6.2f} ms "
                  f"({probe['next_refs'][str(n)] / probe['streams'][str(n)]:.2f}x)")
        if per_seg.get("before"):
            print(f"\ndriver CPU per segment, after / before: {per_seg['after'] / per_seg['before']:.3f}")
        print(f"goal: 512 GPUs x 25 frames/s = {512 * GPU_SEGMENTS_PER_S:.0f} segments/s, i.e. at most "
              f"{1e3 / (512 * GPU_SEGMENTS_PER_S):.2f} ms of driver CPU per segment (0.5 ms with headroom)")
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
