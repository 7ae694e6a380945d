"""Helpers of the job tests: run ``python -m pipeline.run`` (in the test session's job server, or in a
subprocess) and read its output back."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from mava import schema
from pipeline.errors import InputError
from pipeline.reader import ReaderConfig, list_videos, plan_video

REPO = Path(__file__).resolve().parents[1]
SPLIT = "sav_train"
#: one encoder actor per matter actor (the default two), for every job run the tests start: a run on the test
#: split costs ~3 new worker processes instead of 5-7 (the actors' processes end with the run; ~0.5 CPU-s each
#: to start), about 3 CPU-s a run instead of 5. The SIGKILL run and `ray job submit` keep the default two,
#: and their tars are compared with these byte for byte.
ONE_ENCODER = ["--encoders-per-actor", "1"]
COMMON = ["--split", SPLIT, "--address", "local", "--num-cpus", "2", "--no-progress", "--videos-per-shard", "1",
          *ONE_ENCODER]


def run_cli(data_root: Path, out: Path, *extra: str, env: dict | None = None, timeout: float = 240,
            server: "JobServer | None" = None):
    """``python -m pipeline.run`` on ``data_root``/``out`` (one shard per video, a 2-CPU local cluster).

    Runs in the shared job server (:class:`JobServer`: one process, one local Ray session for the
    whole test session) unless the run needs a process or a cluster of its own (``env``, fake GPUs,
    another address): then in a subprocess with its own local Ray cluster. Returns a
    ``subprocess.CompletedProcess`` either way (stderr holds what the run printed and logged)."""
    args = [*COMMON, "--data-root", str(data_root), "--out", str(out), *extra]
    if env or not JobServer.can_run(args):
        cmd = [sys.executable, "-m", "pipeline.run", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    return (server or JobServer.shared()).run(args, timeout)


def _children() -> dict[int, list[int]]:
    """ppid -> pids of the processes running now (from /proc)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    return kids


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process under it, as a machine losing power would: its process group
    and every descendant (Ray's workers too, which could otherwise finish a shard after the "kill")."""
    for _ in range(3):                      # again, for anything forked while we were killing
        kids, todo, tree = _children(), [proc.pid], []
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, []))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    proc.wait()


def planned_keys(split_dir: Path, masklets: str = "manual") -> set[str]:
    """Every sample key the reader plans for the split, failures included (independent of the job)."""
    keys = set()
    for ref in list_videos(str(split_dir)):
        try:
            plan = plan_video(ref, ReaderConfig(masklets=masklets))
        except InputError:
            keys.add(schema.video_failure_key(ref.video_id))
            continue
        keys |= {s.key for s in plan.segments} | {f.key for f in plan.failures}
    return keys


def manifest(out_split: Path) -> list[dict]:
    rel = duckdb.sql(f"select * from '{out_split}/{schema.MANIFEST_GLOB}' order by key")
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


def tree_bytes(out_split: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out_split)): p.read_bytes() for p in sorted(out_split.rglob("*"))
            if p.is_file() and p.name != schema.RUN_JSON}




_SERVER = r"""
import contextlib, io, json, logging, os, sys, traceback
# the answers go out on a copy of stdout; fd 1 becomes stderr, so that nothing else (a worker's log line
# that arrives between two runs, a C library) can write into them
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
from mava import lifecycle
from pipeline.run import main


class _Current:
    # a stream that writes to whatever sys.stderr is now (the capture of the current run)
    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


logging.basicConfig(level=logging.INFO, stream=_Current(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
for line in sys.stdin:
    argv = json.loads(line)
    level = ([argv[i + 1] for i, a in enumerate(argv) if a == "--log-level"] or ["INFO"])[-1]
    logging.getLogger().setLevel(level.upper())
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    ray = sys.modules.get("ray")
    ray_on = bool(ray is not None and ray.is_initialized())
    out.write(json.dumps({"rc": rc, "stdout": so.getvalue(), "stderr": se.getvalue(), "ray": ray_on}) + "\n")
    out.flush()
lifecycle.end_command()
"""


class JobServer:
    """One process that runs ``pipeline.run``'s ``main`` once per request, in one local Ray session.

    A local cluster costs ~9 s to start and stop on 2 cores, the job on the test split ~3 s: tests share
    one server per test session (:meth:`shared`), which the session's end closes (conftest). A run
    that exceeds its timeout kills the server (the next request starts a new one)."""

    _shared: "JobServer | None" = None

    def __init__(self, env: dict | None = None) -> None:
        """``env``: the whole environment of the server (and so of its Ray workers); default: this one."""
        self.env = env
        self.log = tempfile.TemporaryFile()    # the server's own stderr (Ray's messages between runs)
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
                                     env=env)

    def log_tail(self, n: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    @staticmethod
    def can_run(args: list[str]) -> bool:
        """Whether a run with these arguments fits the shared session (its own GPUs, CPUs or address do not)."""
        if "--num-gpus" in args or "--num-cpus" in args[len(COMMON):]:
            return False
        return args[args.index("--address") + 1] == "local" if "--address" in args else False

    @classmethod
    def shared(cls) -> "JobServer":
        if cls._shared is None or cls._shared.proc.poll() is not None:
            cls._shared = cls()
        return cls._shared

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        self.submit(args)
        return self.result(args, timeout)

    def submit(self, args: list[str]) -> None:
        """Start a run (``pipeline.run`` arguments); :meth:`result` waits for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()

    def answered(self) -> bool:
        """Whether the run submitted last has ended (its answer is waiting; :meth:`result` reads it)."""
        return bool(self.proc.stdout is not None and select.select([self.proc.stdout], [], [], 0)[0])

    def result(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        """The outcome of the run submitted last (`args`: its arguments, for messages)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            if not ready:
                raise subprocess.TimeoutExpired(["pipeline.run", *args], timeout)
            raise AssertionError(f"the job server died running {args}: {self.log_tail()}")
        res = json.loads(line)
        done = subprocess.CompletedProcess(["pipeline.run", *args], res["rc"], res["stdout"], res["stderr"])
        done.ray_initialized = res["ray"]  # whether the server's Ray session is up after the run
        return done

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self, timeout: float = 60) -> None:
        """End the server (it stops its Ray session) or kill it."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    @classmethod
    def close_shared(cls) -> None:
        if cls._shared is not None:
            cls._shared.close()
            cls._shared = None


def run_cli_many(data_root: Path, out: Path, runs: list[list[str]], env: dict | None = None,
                 timeout: float = 600, fresh: bool = False) -> list[dict]:
    """Several ``pipeline.run`` invocations, one after the other, in the shared job server (see
    :func:`run_cli`), or with ``fresh`` in a new one that starts without Ray. Returns per run
    ``{"rc", "stdout", "stderr", "log", "ray"}``: ``log`` is ``stderr`` (what the run printed and
    logged at WARNING and above), ``ray`` whether Ray was up after the run (``None`` outside a server)."""
    server = JobServer() if fresh else None
    try:
        results = []
        for r in runs:
            res = run_cli(data_root, out, "--log-level", "WARNING", *r, env=env, timeout=timeout, server=server)
            results.append({"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr, "log": res.stderr,
                            "ray": getattr(res, "ray_initialized", None)})
        return results
    finally:
        if server is not None:
            server.close()
