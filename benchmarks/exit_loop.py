"""Run one command many times and count its exit codes: does it end cleanly every time?

    python -m benchmarks.exit_loop --runs 200 -- -m mava verify out/mava/sav_train --no-progress

Runs ``python ARGS...`` ``--runs`` times, ``--workers`` at a time, each run pinned to one CPU (the
scheduling that exposes races at interpreter exit best: a background thread finishing late competes
with the exiting main thread for the same core). Prints the count of each exit code, the runs that
died by a signal (``-6``/134 is ``std::terminate``: "terminate called without an active exception")
and the first stderr line of each kind of failure. Exit 0 when every run exited with ``--expect``.

``--fork`` starts one process that imports the command's module, then forks each run from it: every
run is still a process of its own that ends through the interpreter's normal exit (what the loop is
about), but skips Python's start and the imports (~0.5 CPU-s of the ~0.6 of a ``mava`` run). Each fork
is made from a process with no Python thread but its main one (checked); the native pools started at
import (OpenBLAS, jemalloc's background thread) have their own fork handlers and start again in the run.
Checked against the exit race this loop was written for: on the commit before its fix (452a640) the
forked loop finds the aborts too (README: Benchmarks, clean exits).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
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
    each: list[tuple[int, str]] = field(default_factory=list)                 # (exit code, stderr) per run
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


# Forks the runs of a loop from one process that imported the command's module. Reads its jobs as JSON
# (argv, cpus, workers, timeout, folder); writes one line "<run> <code>" per finished run. A forked run
# leaves the loop by raising SystemExit out of this top-level code, so the interpreter exits normally.
_ZYGOTE = r"""
import importlib.util, json, os, runpy, signal, sys, threading
job = json.loads(sys.stdin.read())
argv, runs, workers = job["argv"], job["runs"], job["workers"]
main = None
if argv[0] == "-m":
    spec = importlib.util.find_spec(argv[1])
    main = argv[1] + ".__main__" if spec.submodule_search_locations else argv[1]
    importlib.import_module(main)
running, started = {}, 0
while started < runs or running:
    while started < runs and len(running) < workers:
        if threading.active_count() != 1:
            sys.exit(f"exit_loop --fork: the importing process runs {threading.active_count()} Python threads; "
                     "a fork would hide them")
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {job["cpus"][started % len(job["cpus"])]})
            for fd, name in ((1, "out"), (2, "err")):
                os.dup2(os.open(os.path.join(job["folder"], f"{started}.{name}"), os.O_WRONLY | os.O_CREAT), fd)
            signal.alarm(int(job["timeout"]))
            sys.argv = argv[1:] if argv[0] == "-m" else argv
            if main is not None:
                del sys.modules[main]     # runs as __main__ as with "python -m" (its imports stay loaded)
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
            raise SystemExit(0)
        running[pid] = started
        started += 1
    pid, status = os.wait()
    print(running.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
"""


def _fork_loop(args: list[str], runs: int, workers: int, timeout: float) -> list[tuple[int, str]]:
    """(code, stderr) of each run, forked from one process that imported the command's module."""
    with tempfile.TemporaryDirectory(prefix="exit_loop-") as folder:
        job = {"argv": args, "runs": runs, "workers": workers, "timeout": timeout, "folder": folder,
               "cpus": sorted(os.sched_getaffinity(0))}
        res = subprocess.run([sys.executable, "-c", _ZYGOTE], cwd=REPO, input=json.dumps(job), capture_output=True,
                             text=True, timeout=timeout * runs)
        if res.returncode != 0:
            raise RuntimeError(f"exit_loop --fork failed: {res.stderr.strip()[-2000:]}")
        codes = dict(map(int, line.split()) for line in res.stdout.splitlines())
        out = []
        for run in range(runs):
            code = codes[run]
            err = Path(folder, f"{run}.err").read_text(errors="replace")
            out.append((128 - code if code < 0 else code, err))   # killed by a signal: as the shell shows it
        return out


def loop(args: list[str], runs: int, workers: int = 2, expect: int = 0, timeout: float = 300,
         fork: bool = False) -> LoopResult:
    """Run ``python *args`` ``runs`` times, ``workers`` at a time, each pinned to one CPU (``fork``: each
    run forked from one process that imported the command's module)."""
    cpus = sorted(os.sched_getaffinity(0))
    out = LoopResult()
    t0 = time.perf_counter()
    if fork:
        results = _fork_loop(args, runs, workers, timeout)
    else:
        with ThreadPoolExecutor(workers) as pool:
            futs = [pool.submit(_run_once, args, cpus[i % len(cpus)] if cpus else None, timeout)
                    for i in range(runs)]
            results = [(code, err) for code, _, err in (f.result() for f in futs)]
    for code, err in results:
        out.codes[code] += 1
        if code != expect and code not in out.examples:
            out.examples[code] = (err.strip().splitlines() or ["(no stderr)"])[-1][:300]
    out.each = results
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
    p.add_argument("--fork", action="store_true", help="fork each run from one process that imported the command's "
                                                       "module (a real process exit each time, without the start)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of python after '--', e.g. -- -m mava verify DIR")
    a = p.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    if not args:
        p.error("give the command after '--', e.g. -- -m mava verify DIR")
    if a.runs < 1 or a.workers < 1:
        p.error("--runs and --workers must be at least 1")
    res = loop(args, a.runs, a.workers, a.expect, a.timeout, a.fork)
    print(f"python {' '.join(args)}")
    print(res.render())
    return 0 if set(res.codes) == {a.expect} else 1


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
