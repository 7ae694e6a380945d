"""Run a piece of code against this checkout and against an earlier commit of it, in the same benchmark.

``export(commit, dest)`` writes the tree of ``commit`` (``git archive``, no work tree of this checkout is
touched); ``run_in(tree, code, *args)`` runs ``code`` in a fresh interpreter whose imports of
``pipeline``/``mava``/``models`` come from ``tree`` (also in its Ray workers, through PYTHONPATH) and
returns the JSON object it prints on a line that starts with :data:`RESULT`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: prefix of the line with a child's JSON result (other output may follow it, e.g. at interpreter exit)
RESULT = "@@RESULT@@"
#: the last commit before issue 16's executor (per-segment driver work, two opens per video)
BEFORE_EXECUTOR = "452a640"


def export(commit: str, dest: Path) -> Path:
    """The files of ``commit`` under ``dest`` (made once; reused when present)."""
    dest = Path(dest)
    if (dest / "pipeline").is_dir():
        return dest
    raw = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_in(tree: Path, code: str, *args: str, env: dict | None = None, path: tuple = (),
           timeout: float = 3600) -> dict:
    """Run ``code`` (which prints ``RESULT`` + a JSON object) with ``tree`` first on the path, then
    ``path``, then this checkout (for benchmark helpers; never the steps, which come from ``tree``)."""
    extra = os.pathsep.join([str(tree), *map(str, path), str(REPO)])
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": extra}
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=full_env, capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child failed in {tree} (exit {res.returncode}): {res.stderr[-3000:]}")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(RESULT)]
    if not lines:
        raise RuntimeError(f"benchmark child in {tree} printed no result: {res.stdout[-2000:]}{res.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT):])
