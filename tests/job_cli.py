"""Helpers of the job tests: run ``python -m pipeline.run`` in a subprocess and read its output back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from mava import schema
from pipeline.errors import InputError
from pipeline.reader import ReaderConfig, list_videos, plan_video

REPO = Path(__file__).resolve().parents[1]
SPLIT = "sav_train"


def run_cli(data_root: Path, out: Path, *extra: str, env: dict | None = None, timeout: float = 240):
    """``python -m pipeline.run`` in a subprocess with its own local Ray cluster."""
    cmd = [sys.executable, "-m", "pipeline.run", "--split", SPLIT, "--data-root", str(data_root),
           "--out", str(out), "--address", "local", "--num-cpus", "2", "--no-progress",
           "--videos-per-shard", "1", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


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




_MANY = r"""
import contextlib, io, json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.__stderr__,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from pipeline.run import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "stderr": err.getvalue()})
print("@@RESULTS@@" + json.dumps(results))
"""


def run_cli_many(data_root: Path, out: Path, runs: list[list[str]], env: dict | None = None,
                 timeout: float = 600) -> list[dict]:
    """Several ``pipeline.run`` invocations, one after the other, in one process and one local Ray
    session (a new local cluster costs ~15 s on 2 cores). Returns per run ``{"rc", "stderr"}`` (what
    the run printed to stderr; log lines go to the process's stderr, in ``runs[i]["log"]`` of the last)."""
    base = ["--split", SPLIT, "--data-root", str(data_root), "--out", str(out), "--address", "local",
            "--num-cpus", "2", "--no-progress", "--videos-per-shard", "1", "--log-level", "WARNING"]
    res = subprocess.run([sys.executable, "-c", _MANY, __import__("json").dumps([base + r for r in runs])],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    marker = "@@RESULTS@@"
    if marker not in res.stdout:
        raise AssertionError(f"runs did not finish (exit {res.returncode}): {res.stderr[-3000:]}")
    results = __import__("json").loads(res.stdout.split(marker, 1)[1].splitlines()[0])
    for r in results:
        r["log"] = res.stderr
    return results
