"""``make bench``: every CPU benchmark, one after another. Each prints ratios to a baseline of its own run."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = (
    ("reader throughput and memory", "benchmarks.read_bench"),
    ("matter quality (MAD, Grad) and speed", "benchmarks.matter_quality"),
    ("pipeline overhead", "benchmarks.pipeline_bench"),
    ("training loaders", "benchmarks.loader_bench"),
    ("shard writer memory (streaming vs whole shard)", "benchmarks.writer_bench"),
    ("QC scores against graded damage of ground truth", "benchmarks.qc_validation"),
    ("VideoMaMa stages (tiny config on CPU)", "benchmarks.gpu_matter"),
)


def main() -> int:
    for title, module in BENCHMARKS:
        print(f"\n=== {title}: python -m {module}", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(module).main([])
        print(f"=== ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
