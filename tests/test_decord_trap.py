"""DESIGN.md "Known traps": once decord is imported, OpenCV cannot decode PNG. Our PNG paths must
work in such a process (reader workers import decord), so run them in a fresh one that does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import decord  # first, as in a reader worker
import numpy as np
from pipeline.encode import _png
from mava.sample import decode_png_alpha as decode_png

rng = np.random.default_rng(0)
alpha = (rng.random((37, 53)) * 255).astype(np.uint8)
assert np.array_equal(decode_png(_png(alpha)), alpha)
print("ok")
"""


def test_png_round_trip_in_a_process_that_imported_decord():
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_the_trap_is_real_here():
    """Documents why: in such a process cv2.imdecode of a PNG fails (if decord is ever fixed, this
    test fails and the PIL-only rule can be relaxed)."""
    script = ("import decord, cv2, numpy as np\n"
              "ok, buf = cv2.imencode('.png', np.zeros((8, 8), np.uint8))\n"
              "print('decoded' if cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) is not None else 'failed')\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "failed", (res.stdout, res.stderr[-1000:])
