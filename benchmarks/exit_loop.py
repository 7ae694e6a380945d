"""Run one command many times and count its exit codes: does it end cleanly every time?

    python -m benchmarks.exit_loop --runs 200 -- -m mava verify out/mava/sav_train --no-progress

Runs ``python ARGS...`` ``--runs`` times, ``--workers`` at a time, each run pinned to one CPU (the
scheduling that exposes races at interpreter exit best: a background thread finishing late competes
with the exiting main thread for the same core). Prints the count of each exit code, the runs that
died by a signal (``-6``/134 is ``std::terminate``: "terminate called without an active exception")
and the first stderr line of each kind of failure. Exit 0 when every run exited with ``--expect``.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mava import lifecycle

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LoopResult:
    codes: collections.Counter = field(default_factory=collections.Counter)   # exit code -> runs
    examples: dict[int, str] = field(default_factory=dict)                    # exit code -> a stderr tail
    wall_s: float = 0.0

    @property
    def runs(self) -> int:
        return sum(self.codes.values())

    def render(self) -> str:
        counts = ", ".join(f"exit {c}: {n}" for c, n in sorted(self.codes.items()))
        lines = [f"{self.runs} runs in {self.wall_s:.0f} s: {counts}"]
        lines += [f"  exit {c}: {tail}" for c, tail in sorted(self.examples.items())]
        return "\n".join(lines)


def _run_once(args: list[str], cpu: int | None, timeout: float) -> tuple[int, str, str]:
    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         preexec_fn=pin)
    # a run killed by a signal reads as the shell shows it (SIGABRT -> 134)
    code = 128 - res.returncode if res.returncode < 0 else res.returncode
    return code, res.stdout, res.stderr


def loop(args: list[str], runs: int, workers: int = 2, expect: int = 0, timeout: float = 300) -> LoopResult:
    """Run ``python *args`` ``runs`` times, ``workers`` at a time, each pinned to one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    out = LoopResult()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        futs = [pool.submit(_run_once, args, cpus[i % len(cpus)] if cpus else None, timeout) for i in range(runs)]
        for f in futs:
            code, _, err = f.result()
            out.codes[code] += 1
            if code != expect and code not in out.examples:
                out.examples[code] = (err.strip().splitlines() or ["(no stderr)"])[-1][:300]
    out.wall_s = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.exit_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("a run exited with another code than --expect"))
    p.add_argument("--runs", type=int, default=100, help="how many runs")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (each pinned to one CPU)")
    p.add_argument("--expect", type=int, default=0, help="the exit code every run must give")
    p.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of python after '--', e.g. -- -m mava verify DIR")
    a = p.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    if not args:
        p.error("give the command after '--', e.g. -- -m mava verify DIR")
    if a.runs < 1 or a.workers < 1:
        p.error("--runs and --workers must be at least 1")
    res = loop(args, a.runs, a.workers, a.expect, a.timeout)
    print(f"python {' '.join(args)}")
    print(res.render())
    return 0 if set(res.codes) == {a.expect} else 1


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
