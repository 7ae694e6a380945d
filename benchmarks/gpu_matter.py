"""VideoMaMa speed check: per-stage ms, frames/s, peak memory, TFLOP/s, baseline vs optimised.

Builds the matter architecture with random weights and runs the production code path
(``VideoMaMaMatter.refine_batch``; stages are timed through its ``stage`` hook, nothing is copied):

* default: the tiny config, saved and loaded through ``from_pretrained`` (runs on CPU; keeps this tested);
* ``--full``: the real SVD img2vid-xt UNet (conv_in widened to 12) and VAE, random init, built on the
  device in bf16 (needs a GPU: ~3 GB of weights).

Two matters see the same segments: the baseline (plain eager, batch 1, no speed options, the chosen
dtype) and the optimised one (the flags given here). Printed: warm-up (compile/autotune) time,
seconds and frames/s per iteration, achieved TFLOP/s and the fraction of ``--peak-tflops`` (FLOPs
counted once with torch.utils.flop_counter.FlopCounterMode on the eager path), the max/mean absolute
alpha difference optimised vs baseline, and with ``--stage-timing`` a per-stage table (ms, peak memory).

GPU run (H100):  python -m benchmarks.gpu_matter --full --compile --batch 2 --cudnn-benchmark --stage-timing
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.arch import build_unet, build_vae, full_unet_config, full_vae_config
from models.base import MatterConfig
from models.tiny import make_tiny
from models.videomama import VideoMaMaMatter, model_size, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

STAGES = ("preprocess", "encode", "unet", "decode", "postprocess")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Stage hook: synchronised wall time and peak allocated memory per stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.peak_mb: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.ms[name].append(1e3 * (time.perf_counter() - t0))
        if self.device.type == "cuda":
            self.peak_mb[name] = max(self.peak_mb[name], torch.cuda.max_memory_allocated(self.device) / 2**20)


class FlopStages:
    """Stage hook: FLOPs per stage (FlopCounterMode)."""

    def __init__(self):
        self.flops: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, name: str):
        with FlopCounterMode(display=False) as fc:
            yield
        self.flops[name] += fc.get_total_flops()


def make_segments(n: int, t: int, h: int, w: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random frames with an elliptic moving mask (content does not matter for speed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    clips = []
    for _ in range(n):
        frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
        masks = np.stack([((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 3 - i * w / (4 * t)) / (w / 5)) ** 2 < 1
                          for i in range(t)])
        clips.append((frames, masks))
    return clips


def build_models(args, device: torch.device, dtype: torch.dtype, tmp: str):
    """(unet, vae) with random weights: real SVD sizes built on the device, or tiny via from_pretrained."""
    if args.full:
        t0 = time.perf_counter()
        with torch.device(device):
            unet, vae = build_unet(full_unet_config()), build_vae(full_vae_config())
            if dtype != torch.float32:
                unet, vae = unet.to(dtype), vae.to(dtype)
        log.info("built real-size UNet + VAE on %s in %.1f s", device, time.perf_counter() - t0)
        return unet, vae
    ckpt, base = make_tiny(tmp)
    loaded = VideoMaMaMatter(MatterConfig(checkpoint=str(ckpt), base_model=str(base),
                                          device=str(device), dtype=args.dtype))
    return loaded.unet, loaded.vae


def run_matter(matter: VideoMaMaMatter, clips, keys, iters: int, uint8: bool):
    """(warm-up seconds, list of per-iteration seconds, last output as float arrays)."""
    fn = matter.refine_batch_uint8 if uint8 else matter.refine_batch
    t0 = time.perf_counter()
    out = fn(clips, keys)
    _sync(matter.device)
    warm = time.perf_counter() - t0
    secs = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = fn(clips, keys)
        _sync(matter.device)
        secs.append(time.perf_counter() - t0)
    if uint8:
        out = [a.astype(np.float32) / 255.0 for a in out]
    return warm, secs, out


def stage_table(matter: VideoMaMaMatter, clips, keys, iters: int, flops: dict[str, int], label: str,
                peak_tflops: float | None) -> str:
    timer = StageTimer(matter.device)
    matter.stage = timer
    try:
        for _ in range(iters):
            matter.refine_batch(clips, keys)
    finally:
        matter.stage = lambda name: contextlib.nullcontext()
    per_call = max(1, matter.cfg.batch_size)
    lines = [f"[{label}] per stage, per forward call of {per_call} segment(s) (mean; synchronised timers)",
             f"  {'stage':<12} {'ms':>9} {'TFLOP':>8} {'TFLOP/s':>8} {'of peak':>8} {'peak MiB':>9}"]
    for name in STAGES:
        ms = float(np.mean(timer.ms[name])) if timer.ms[name] else 0.0
        tf = flops.get(name, 0) / 1e12
        rate = tf / (ms / 1e3) if ms > 0 else 0.0
        frac = f"{rate / peak_tflops:8.1%}" if peak_tflops else f"{'n/a':>8}"
        mem = f"{timer.peak_mb[name]:9.0f}" if matter.device.type == "cuda" else f"{'n/a':>9}"
        lines.append(f"  {name:<12} {ms:9.1f} {tf:8.3f} {rate:8.2f} {frac} {mem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="real SVD img2vid-xt sizes (random init); needs a GPU")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16")
    p.add_argument("--height", type=int, default=None, help="frame height (default 576 with --full, else 128)")
    p.add_argument("--width", type=int, default=None, help="frame width (default 1024 with --full, else 192)")
    p.add_argument("--source-height", type=int, default=None,
                   help="source frame height uploaded as uint8 (default: --height; differs -> resize on the device)")
    p.add_argument("--source-width", type=int, default=None, help="source frame width (default: --width)")
    p.add_argument("--frames", type=int, default=12, help="frames per segment")
    p.add_argument("--batch", type=int, default=1,
                   help="segments per optimised forward pass; the workload is this many segments for both paths")
    p.add_argument("--iters", type=int, default=3, help="timed iterations after the warm-up call")
    p.add_argument("--compile", action="store_true", help="torch.compile in the optimised path")
    p.add_argument("--compile-mode", default="default",
                   help="default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs")
    p.add_argument("--compile-parts", default="unet,encoder,decoder", help="parts to compile (comma list)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning in the optimised path")
    p.add_argument("--channels-last", action="store_true", help="channels-last VAE convolutions (optimised path)")
    p.add_argument("--pin-memory", action="store_true", help="pinned host buffers + non_blocking uploads")
    p.add_argument("--uint8", action="store_true", help="optimised path returns uint8 alpha (cast on the device)")
    p.add_argument("--decode-chunk", type=int, default=12, help="VAE decode chunk (frames) in the optimised path")
    p.add_argument("--encode-chunk", type=int, default=0, help="VAE encode chunk (images), 0 = all at once")
    p.add_argument("--posterior", default="sample", help="sample | mode (optimised path)")
    p.add_argument("--stage-timing", action="store_true", help="print a per-stage table for both paths")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline (no ratios or alpha diff)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense FLOP limit for the fraction column (default 790 on CUDA as in issue 6, none on CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.full and device.type != "cuda":
        log.warning("--full on %s: real-size model on CPU will be very slow", device)
    h = args.height or (576 if args.full else 128)
    w = args.width or (1024 if args.full else 192)
    peak = args.peak_tflops or (790.0 if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # baseline first, plain

    sh, sw = args.source_height or h, args.source_width or w
    clips = make_segments(args.batch, args.frames, sh, sw)
    keys = [f"bench_{i:03d}" for i in range(len(clips))]
    n_frames = args.batch * args.frames
    long_side = max(h, w)
    if model_size(sh, sw, long_side) != (h, w):
        raise SystemExit(f"source {sw}x{sh} does not map to model {w}x{h} at long side {long_side}: keep the aspect")
    base_cfg = MatterConfig(device=str(device), dtype=args.dtype, long_side=long_side, segment_len=args.frames,
                            batch_size=1, decode_chunk=args.frames)
    opt_cfg = replace(base_cfg, batch_size=args.batch, compile=args.compile, compile_mode=args.compile_mode,
                      compile_parts=args.compile_parts, cudnn_benchmark=args.cudnn_benchmark,
                      channels_last=args.channels_last, pin_memory=args.pin_memory,
                      decode_chunk=args.decode_chunk, encode_chunk=args.encode_chunk, posterior=args.posterior)

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        unet, vae = build_models(args, device, dtype, tmp)
        baseline = VideoMaMaMatter.from_modules(unet, vae, base_cfg)
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"VideoMaMa speed check on {dev_name} ({device}), {'real SVD' if args.full else 'tiny'} "
              f"architecture, random weights, {dtype}; {args.batch} segment(s) x {args.frames} frames "
              f"at {sw}x{sh} (model {w}x{h})")

        # FLOPs once, eager, one segment through the production path
        counter = FlopStages()
        baseline.stage = counter
        baseline.refine_batch(clips[:1], keys[:1])
        baseline.stage = lambda name: contextlib.nullcontext()
        flops_seg = dict(counter.flops)
        total_tf = sum(flops_seg.values()) / 1e12
        print(f"FLOPs per segment: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP" for k, v in flops_seg.items())
              + f"; total {total_tf:.3f} TFLOP")

        def report(label: str, warm: float, secs: list[float]) -> float:
            s = float(np.median(secs))
            fps = n_frames / s
            rate = total_tf * args.batch / s
            frac = f", {rate / peak:.1%} of {peak:.0f} TFLOP/s" if peak else ""
            limit = f"; FLOP-limit {peak / total_tf * args.frames:.1f} frames/s" if peak else ""
            print(f"[{label}] warm-up {warm:.2f} s; {1e3 * s:.1f} ms per {args.batch} segment(s) "
                  f"(median of {len(secs)}) -> {fps:.2f} frames/s, {rate:.2f} TFLOP/s{frac}{limit}")
            return fps

        base_out = None
        if not args.no_baseline:
            warm, secs, base_out = run_matter(baseline, clips, keys, args.iters, uint8=False)
            base_fps = report("baseline eager", warm, secs)
            if args.stage_timing:
                print(stage_table(baseline, clips, keys, args.iters, flops_seg_scaled(flops_seg, 1), "baseline eager",
                                  peak))

        optimised = VideoMaMaMatter.from_modules(unet, vae, opt_cfg)
        flags = [f for f, on in [("compile:" + args.compile_mode, args.compile), ("cudnn.benchmark", args.cudnn_benchmark),
                                 ("channels_last", args.channels_last), ("pinned", args.pin_memory),
                                 ("uint8", args.uint8), (f"batch {args.batch}", args.batch > 1),
                                 (f"decode_chunk {args.decode_chunk}", 0 < args.decode_chunk < args.frames),
                                 (f"posterior {args.posterior}", args.posterior != "sample")] if on]
        label = "optimised: " + (", ".join(flags) or "same options as baseline")
        warm, secs, opt_out = run_matter(optimised, clips, keys, args.iters, uint8=args.uint8)
        opt_fps = report(label, warm, secs)
        if args.stage_timing:
            print(stage_table(optimised, clips, keys, args.iters, flops_seg_scaled(flops_seg, args.batch),
                              "optimised", peak))
        if base_out is not None:
            diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(opt_out, base_out)])
            print(f"speed-up optimised / baseline: {opt_fps / base_fps:.2f}x")
            print(f"alpha |optimised - baseline|: max {diffs.max():.2e}, mean {diffs.mean():.2e}"
                  + (" (includes 8-bit quantisation)" if args.uint8 else ""))
    return 0


def flops_seg_scaled(flops: dict[str, int], segments: int) -> dict[str, int]:
    """Per-call FLOPs when a call carries ``segments`` segments."""
    return {k: v * segments for k, v in flops.items()}


if __name__ == "__main__":
    raise SystemExit(main())
