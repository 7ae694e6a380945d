"""``make bench``: every CPU benchmark, one after another. Each prints ratios to a baseline of its own run."""

from __future__ import annotations

import importlib
import sys
import time

from mava import lifecycle

BENCHMARKS = (
    ("reader throughput and memory", "benchmarks.read_bench"),
    ("bytes fetched per video from object storage", "benchmarks.read_bytes_bench"),
    ("planning and the rerun skip check at SA-V scale", "benchmarks.plan_bench"),
    ("matter quality (MAD, Grad) and speed", "benchmarks.matter_quality"),
    ("pipeline overhead", "benchmarks.pipeline_bench"),
    ("training loaders", "benchmarks.loader_bench"),
    ("shard writer memory (streaming vs whole shard)", "benchmarks.writer_bench"),
    ("QC scores against graded damage of ground truth", "benchmarks.qc_validation"),
    ("VideoMaMa stages (tiny config on CPU)", "benchmarks.gpu_matter"),
)


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.all", description=__doc__,
                                epilog=lifecycle.exit_codes("a benchmark's own check failed (it says which)"))
    p.parse_args(argv)
    code = lifecycle.EXIT_OK
    for title, module in BENCHMARKS:
        print(f"\n=== {title}: python -m {module}", flush=True)
        t0 = time.perf_counter()
        code = max(code, importlib.import_module(module).main([]) or lifecycle.EXIT_OK)
        print(f"=== ({time.perf_counter() - t0:.0f} s)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
