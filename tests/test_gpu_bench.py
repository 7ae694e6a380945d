"""benchmarks.gpu_matter on CPU with the tiny config: every table the GPU run prints, from the production path."""

from __future__ import annotations

import re

from benchmarks.gpu_matter import main

COMMON = ["--device", "cpu", "--height", "64", "--width", "128", "--frames", "3", "--decode-chunk", "3",
          "--iters", "1"]


def test_baseline_vs_optimised_eager_with_kernels_and_profile(capsys):
    assert main(COMMON + ["--batch", "2", "--pad-batch", "--fused-group-norm", "--channels-last", "--stage-timing",
                          "--kernels", "--kernel-reps", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    for text in ("GroupNorm(+SiLU) calls of one 3-frame segment", "stock  total per segment", "CL     total per segment",
                 "[baseline eager] warm-up", "[optimised: fused GroupNorm, channels_last, batch 2, padded]",
                 "pre+post", "frames/s (3 frames per call)", "frames/s (6 frames per call)",
                 "[baseline eager] decode stage:", "[optimised] decode stage: 0 copies"):
        assert text in out, text
    stock_copies = int(re.search(r"\[baseline eager\] decode stage: (\d+) copies", out).group(1))
    assert stock_copies > 0
    mean = float(re.search(r"alpha \|optimised - baseline\|: max [0-9.e+-]+, mean ([0-9.e+-]+)", out).group(1))
    assert mean < 1e-4 and "meets the goal mean <= 1/255" in out


def test_compiled_path_and_mixed_workload_counts(capsys):
    assert main(COMMON + ["--batch", "2", "--pad-batch", "--channels-last", "--compile", "--eager-first",
                          "--compile-backend", "eager", "--compile-parts", "decoder", "--shape-buckets", "128x64",
                          "--mixed", "--mixed-long-side", "256"]) == 0
    out = capsys.readouterr().out
    assert "[optimised eager: channels_last, batch 2, padded, buckets 128x64]" in out
    assert "[optimised: channels_last, compile:default/eager, batch 2, padded, buckets 128x64]" in out
    assert "compile: 1 compiles, 0 recompiles" in out and "decoder 1x/1 shapes" in out
    # mixed: 16:9, 9:16 and 4:3 sources -> 3 buckets at long side 256; one decoder compile each, none on pass 2
    assert re.search(r"buckets 256x128,128x256,256x192,192x256,256x256", out)
    assert "pass 1:" in out and "total compiles 3, recompiles 2" in out.split("pass 2:")[1].splitlines()[0]
    assert "decoder 3x/3 shapes" in out
