"""VideoMaMa speed check: per-stage ms, frames/s, compile time and counts, baseline vs optimised.

Builds the matter architecture with random weights and runs the production code path
(``VideoMaMaMatter.refine_batch``; stages are timed through its ``stage`` hook, nothing is copied):

* default: the tiny config, saved and loaded through ``from_pretrained`` (runs on CPU; keeps this tested);
* ``--full``: the real SVD img2vid-xt UNet (conv_in widened to 12) and VAE, random init, built on the
  device in bf16 (needs a GPU: ~3 GB of weights).

In one process, on the same segments: the baseline (plain eager, batch 1, no speed options, decode in
chunks of ``--decode-chunk`` = 8 as the release) and the optimised path (the flags given here; with
``--compile --eager-first`` the same options are measured eager first). Each matter gets its own VAE
copy (the speed options patch modules in place). Printed per path: warm-up (compile) time, ms and
frames/s, achieved TFLOP/s (FLOPs counted once with FlopCounterMode on the eager path), the max/mean
alpha difference against the baseline (goal: mean <= 1/255), compile counts, and with
``--stage-timing`` a per-stage table. ``--kernels`` times every GroupNorm call of one VAE decode and
encode, aten (GroupNorm then SiLU) vs the fused kernel, in the stock and the channels-last layout.
``--profile`` counts the layout copies of one decode and lists the top kernels. ``--mixed`` runs a
mixed-aspect workload (16:9, 9:16, 4:3 sources; shape buckets, padded batches) through a fresh compile
and prints compiles/recompiles per part and compile seconds.

GPU run (H100): benchmarks/gpu_device.sh (one call); CPU: make bench-gpu.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mava import lifecycle
from models.arch import build_unet, build_vae, full_unet_config, full_vae_config
from models.base import MatterConfig
from models.groupnorm import FusedGroupNorm, fuse_group_norms, group_norm
from models.tiny import make_tiny
from models.vae_layout import CopyCounter, channels_last, to_channels_last
from models.videomama import VideoMaMaMatter, model_size, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

STAGES = ("preprocess", "encode", "unet", "decode", "postprocess")
ALPHA_GOAL = 1 / 255


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
        return unet.eval(), vae.eval()
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
                peak_tflops: float | None, frames_per_call: int) -> str:
    timer = StageTimer(matter.device)
    matter.stage = timer
    try:
        for _ in range(iters):
            matter.refine_batch(clips, keys)
    finally:
        matter.stage = lambda name: contextlib.nullcontext()
    calls = max(1, len(timer.ms["unet"]) // max(1, iters))
    per_call = max(1, matter.cfg.batch_size)
    lines = [f"[{label}] per stage, per forward call of {per_call} segment(s) (mean of {iters} x {calls} "
             f"call(s); synchronised timers)",
             f"  {'stage':<12} {'ms':>9} {'TFLOP':>8} {'TFLOP/s':>8} {'of peak':>8} {'peak MiB':>9}"]
    mean = {n: float(np.mean(timer.ms[n])) if timer.ms[n] else 0.0 for n in STAGES}
    rows = [(n, mean[n], flops.get(n, 0)) for n in ("encode", "unet", "decode")]
    rows.append(("pre+post", mean["preprocess"] + mean["postprocess"], 0))
    for name, ms, fl in rows:
        tf = fl / 1e12
        rate = tf / (ms / 1e3) if ms > 0 else 0.0
        frac = f"{rate / peak_tflops:8.1%}" if peak_tflops and fl else f"{'':>8}"
        mem = (f"{max(timer.peak_mb[n] for n in (('preprocess', 'postprocess') if name == 'pre+post' else (name,))):9.0f}"
               if matter.device.type == "cuda" else f"{'n/a':>9}")
        lines.append(f"  {name:<12} {ms:9.1f} {tf:8.3f} {rate:8.2f} {frac} {mem}")
    total = sum(mean.values())
    lines.append(f"  {'total':<12} {total:9.1f}  -> {frames_per_call / (total / 1e3):.2f} frames/s "
                 f"({frames_per_call} frames per call)")
    return "\n".join(lines)


def compile_line(matter: VideoMaMaMatter) -> str | None:
    st = matter.stats()["compile"]
    if st is None:
        return None
    parts = ", ".join(f"{n} {p['compiles']}x/{p['shapes']} shapes ({p['compile_s']:.1f} s)"
                      for n, p in st["parts"].items())
    cache = st.get("cache") or {}
    return (f"  compile: {st['compiles']} compiles, {st['recompiles']} recompiles, {st['compile_s']:.1f} s in "
            f"compiling calls; {parts}; FX graph cache hit/miss {st['fxgraph_cache_hit']}/{st['fxgraph_cache_miss']}"
            + (f"; artefact blobs loaded {cache.get('blobs_loaded', 0)}, saves {cache.get('saves', 0)}" if cache else ""))


# ------------------------------------------------------------------------------------ GroupNorm


def groupnorm_calls(vae, device, dtype, frames: int, h: int, w: int, chunk: int) -> Counter:
    """Every GroupNorm call of one encode (frames + masks) and one chunked decode: (shape, strides, groups,
    eps) -> calls. Modules may be nn.GroupNorm or FusedGroupNorm (the layout then is the optimised one)."""
    calls: Counter = Counter()

    def hook(mod, args):
        x = args[0]
        calls[(tuple(x.shape), tuple(x.stride()), mod.num_groups, mod.eps)] += 1

    hooks = [m.register_forward_pre_hook(hook) for m in vae.modules()
             if isinstance(m, (torch.nn.GroupNorm, FusedGroupNorm))]
    cl = any(m.weight.is_contiguous(memory_format=torch.channels_last) for m in vae.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    try:
        with torch.inference_mode():
            x = torch.randn(2 * frames, 3, h, w, device=device, dtype=dtype)
            vae.encode(channels_last(x) if cl else x)
            for s in range(0, frames, chunk):
                n = min(chunk, frames - s)
                z = torch.randn(n, vae.config.latent_channels, h // f, w // f, device=device, dtype=dtype)
                vae.decode(channels_last(z) if cl else z, num_frames=n)
    finally:
        for hk in hooks:
            hk.remove()
    return calls


def _time_ms(fn, device, reps: int) -> float:
    fn()
    _sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(ts))


def groupnorm_table(vae, device, dtype, frames: int, h: int, w: int, chunk: int, reps: int = 5) -> str:
    """Per distinct GroupNorm call of one segment (stock layout, then channels-last): aten GroupNorm + SiLU vs
    the fused kernel (Triton on CUDA; on CPU the torch reference of the same split reduction)."""
    fused_impl = "triton" if device.type == "cuda" else "reference"
    stock_vae = copy.deepcopy(vae)
    cl_vae = copy.deepcopy(vae)
    fuse_group_norms(cl_vae)
    to_channels_last(cl_vae)
    lines = [f"GroupNorm(+SiLU) calls of one {frames}-frame segment (encode frames+masks, decode in chunks of "
             f"{chunk}), {dtype}: aten GroupNorm then SiLU vs fused ({fused_impl}); median of {reps}",
             f"  {'layout':<6} {'shape':<26} {'strides':<34} {'calls':>5} {'aten ms':>9} {'fused ms':>9} "
             f"{'x':>6} {'GB/s':>7} {'max err':>8}"]
    for layout, model in (("stock", stock_vae), ("CL", cl_vae)):
        tot_a = tot_f = 0.0
        for (shape, stride, groups, eps), n in sorted(groupnorm_calls(model, device, dtype, frames, h, w,
                                                                      chunk).items(), key=lambda kv: -np.prod(kv[0][0])):
            x = torch.empty_strided(shape, stride, device=device, dtype=dtype).normal_()
            c = shape[1]
            wgt = torch.randn(c, device=device, dtype=dtype)
            b = torch.randn(c, device=device, dtype=dtype)
            ta = _time_ms(lambda: F.silu(F.group_norm(x, groups, wgt, b, eps)), device, reps)
            tf = _time_ms(lambda: group_norm(x, groups, wgt, b, eps, silu=True, impl=fused_impl), device, reps)
            y = group_norm(x, groups, wgt, b, eps, silu=True, impl=fused_impl)
            ref = F.silu(F.group_norm(x.float(), groups, wgt.float(), b.float(), eps))
            err = (y.float() - ref).abs().max().item()
            gbs = 3 * x.numel() * x.element_size() / (tf / 1e3) / 1e9
            tot_a += n * ta
            tot_f += n * tf
            lines.append(f"  {layout:<6} {str(list(shape)):<26} {str(list(stride)):<34} {n:5d} {ta:9.3f} {tf:9.3f} "
                         f"{ta / tf:6.1f} {gbs:7.0f} {err:8.1e}")
            del x, y, ref
        lines.append(f"  {layout:<6} total per segment: aten {tot_a:.1f} ms, fused {tot_f:.1f} ms "
                     f"({tot_a / max(tot_f, 1e-9):.1f}x)")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- profile


def profile_decode(matter: VideoMaMaMatter, clips, keys, label: str, rows: int = 12) -> str:
    """Layout copies (aten::copy_) of one call's decode stage, and the top kernels/ops of the whole call."""
    from torch.profiler import ProfilerActivity, profile

    counter = CopyCounter(min_numel=1 << 16)

    @contextlib.contextmanager
    def hook(name):
        with (counter if name == "decode" else contextlib.nullcontext()):
            yield

    matter.stage = hook
    try:
        matter.refine_batch(clips, keys)
    finally:
        matter.stage = lambda name: contextlib.nullcontext()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if matter.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        matter.refine_batch(clips, keys)
        _sync(matter.device)
    sort = "cuda_time_total" if matter.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    return (f"[{label}] decode stage: {counter.count} copies >= 64K elements "
            f"({counter.bytes / 1e6:.1f} M elements)\n{table}")


# ---------------------------------------------------------------------------------------- mixed


def mixed_workload(unet, vae, cfg: MatterConfig, frames: int, long_side: int, backend: str, iters: int = 2) -> str:
    """3 aspect ratios (16:9, 9:16, 4:3 sources: 3, 2 and 1 segments) through a fresh compile with the
    ``auto`` shape buckets at ``long_side`` and padded batches of >= 2: compiles per part, recompiles, compile seconds; a second pass must add none."""
    scale = long_side / 1024
    sizes = [(round(720 * scale), round(1280 * scale))] * 3 + [(round(1280 * scale), round(720 * scale))] * 2 \
        + [(round(768 * scale), round(1024 * scale))]
    clips = [make_segments(1, frames, hh, ww, seed=i)[0] for i, (hh, ww) in enumerate(sizes)]
    keys = [f"mixed_{i:02d}" for i in range(len(clips))]
    mcfg = replace(cfg, compile=True, compile_backend=backend, long_side=long_side, pad_batch=True,
                   shape_buckets="auto", batch_size=max(2, cfg.batch_size))
    torch._dynamo.reset()   # a fresh actor: no in-memory compiled code (inductor's on-disk caches remain)
    m = VideoMaMaMatter.from_modules(unet, copy.deepcopy(vae), mcfg)
    lines = [f"[mixed workload] {len(clips)} segments of {frames} frames, sources "
             f"{', '.join(f'{ww}x{hh}' for hh, ww in sorted(set(sizes)))}; buckets {m.params()['shape_buckets']}; "
             f"batch {mcfg.batch_size} padded; compile backend {backend}"]
    for i in range(iters):
        t0 = time.perf_counter()
        m.refine_batch(clips, keys)
        _sync(m.device)
        st = m.stats()["compile"]
        lines.append(f"  pass {i + 1}: {time.perf_counter() - t0:.1f} s; total compiles {st['compiles']}, "
                     f"recompiles {st['recompiles']}")
    lines.append(compile_line(m))
    torch._dynamo.reset()
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main


def parse_args(argv):
    p = lifecycle.OneLineParser(prog="python -m benchmarks.gpu_matter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--full", action="store_true", help="real SVD img2vid-xt sizes (random init); needs a GPU")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16")
    p.add_argument("--height", type=int, default=None, help="model height (default 576 with --full, else 128)")
    p.add_argument("--width", type=int, default=None, help="model width (default 1024 with --full, else 192)")
    p.add_argument("--source-height", type=int, default=None,
                   help="source frame height uploaded as uint8 (default: --height; differs -> resize on the device)")
    p.add_argument("--source-width", type=int, default=None, help="source frame width (default: --width)")
    p.add_argument("--frames", type=int, default=12, help="frames per segment")
    p.add_argument("--batch", type=int, default=1,
                   help="segments per optimised forward pass; the workload is this many segments for both paths")
    p.add_argument("--iters", type=int, default=3, help="timed iterations after the warm-up call")
    p.add_argument("--decode-chunk", type=int, default=8,
                   help="VAE decode chunk (frames), both paths: 8 as the release (an output option)")
    p.add_argument("--compile", action="store_true", help="torch.compile in the optimised path")
    p.add_argument("--eager-first", action="store_true",
                   help="with --compile: measure the optimised options eager first (same process)")
    p.add_argument("--compile-mode", default="default",
                   help="default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs")
    p.add_argument("--compile-parts", default="unet,encoder,decoder", help="parts to compile (comma list)")
    p.add_argument("--compile-backend", default="inductor", help="inductor | aot_eager | eager")
    p.add_argument("--compile-cache", default="", help="compiled-artefact folder or fsspec URL (reused on rerun)")
    p.add_argument("--shape-buckets", default="", help="model sizes WxH or 'auto' (optimised and mixed paths)")
    p.add_argument("--pad-batch", action="store_true", help="pad a smaller last batch (optimised path)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning in the optimised path")
    p.add_argument("--channels-last", action="store_true", help="channels-last VAE end to end (optimised path)")
    p.add_argument("--fused-group-norm", action="store_true", help="fused GroupNorm(+SiLU) kernels (optimised path)")
    p.add_argument("--pin-memory", action="store_true", help="pinned host buffers + non_blocking uploads")
    p.add_argument("--uint8", action="store_true", help="optimised path returns uint8 alpha (cast on the device)")
    p.add_argument("--encode-chunk", type=int, default=0, help="VAE encode chunk (images), 0 = all at once")
    p.add_argument("--posterior", default="sample", help="sample | mode (optimised path)")
    p.add_argument("--stage-timing", action="store_true", help="print a per-stage table for every path")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline (no ratios or alpha diff)")
    p.add_argument("--kernels", action="store_true", help="time every GroupNorm call of a segment, aten vs fused")
    p.add_argument("--profile", action="store_true", help="layout copies of the decode + top kernels, per path")
    p.add_argument("--kernel-reps", type=int, default=5, help="timed repetitions per GroupNorm call (--kernels)")
    p.add_argument("--mixed", action="store_true", help="mixed-aspect workload: compile counts per bucket")
    p.add_argument("--skip-main", action="store_true",
                   help="only --kernels and/or --mixed: no baseline/optimised comparison")
    p.add_argument("--mixed-backend", default=None, help="compile backend of --mixed (default: --compile-backend)")
    p.add_argument("--mixed-long-side", type=int, default=None, help="long side of --mixed (default: the model's)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense FLOP limit for the fraction column (default 790 on CUDA as in issue 6, none on CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    if not args.shape_buckets and model_size(sh, sw, long_side) != (h, w):
        raise SystemExit(f"source {sw}x{sh} does not map to model {w}x{h} at long side {long_side}: keep the aspect")
    base_cfg = MatterConfig(device=str(device), dtype=args.dtype, long_side=long_side, segment_len=args.frames,
                            batch_size=1, decode_chunk=args.decode_chunk)
    opt_cfg = replace(base_cfg, batch_size=args.batch, compile=args.compile, compile_mode=args.compile_mode,
                      compile_parts=args.compile_parts, compile_backend=args.compile_backend,
                      compile_cache=args.compile_cache, shape_buckets=args.shape_buckets, pad_batch=args.pad_batch,
                      cudnn_benchmark=args.cudnn_benchmark, channels_last=args.channels_last,
                      fused_group_norm=args.fused_group_norm, pin_memory=args.pin_memory,
                      encode_chunk=args.encode_chunk, posterior=args.posterior)

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        unet, vae = build_models(args, device, dtype, tmp)
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"VideoMaMa speed check on {dev_name} ({device}), torch {torch.__version__}, "
              f"{'real SVD' if args.full else 'tiny'} architecture, random weights, {dtype}; {args.batch} segment(s) x "
              f"{args.frames} frames at {sw}x{sh} (model {w}x{h}), decode chunk {args.decode_chunk}")
        if args.kernels:
            print(groupnorm_table(vae, device, next(vae.parameters()).dtype, args.frames, h, w, args.decode_chunk,
                                  args.kernel_reps))
        if args.skip_main:
            if args.mixed:
                print(mixed_workload(unet, vae, opt_cfg, args.frames, args.mixed_long_side or long_side,
                                     args.mixed_backend or args.compile_backend))
            return 0
        baseline = VideoMaMaMatter.from_modules(unet, copy.deepcopy(vae), base_cfg)

        # FLOPs once, eager, one segment through the production path
        counter = FlopStages()
        baseline.stage = counter
        baseline.refine_batch(clips[:1], keys[:1])
        baseline.stage = lambda name: contextlib.nullcontext()
        flops_seg = dict(counter.flops)
        total_tf = sum(flops_seg.values()) / 1e12
        print("FLOPs per segment: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP" for k, v in flops_seg.items())
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

        def alpha_diff(label: str, out) -> None:
            diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(out, base_out)])
            verdict = "meets" if diffs.mean() <= ALPHA_GOAL else "MISSES"
            print(f"alpha |{label} - baseline|: max {diffs.max():.2e}, mean {diffs.mean():.2e}"
                  + (" (includes 8-bit quantisation)" if args.uint8 else "")
                  + f"; {verdict} the goal mean <= 1/255")

        base_out = None
        base_fps = None
        if not args.no_baseline:
            warm, secs, base_out = run_matter(baseline, clips, keys, args.iters, uint8=False)
            base_fps = report("baseline eager", warm, secs)
            if args.stage_timing:
                print(stage_table(baseline, clips, keys, args.iters, flops_seg_scaled(flops_seg, 1), "baseline eager",
                                  peak, args.frames))
            if args.profile:
                print(profile_decode(baseline, clips[:1], keys[:1], "baseline eager"))

        flags = [f for f, on in [("fused GroupNorm", args.fused_group_norm), ("channels_last", args.channels_last),
                                 ("compile:" + args.compile_mode + ("" if args.compile_backend == "inductor"
                                                                    else "/" + args.compile_backend), args.compile),
                                 ("cudnn.benchmark", args.cudnn_benchmark), ("pinned", args.pin_memory),
                                 ("uint8", args.uint8), (f"batch {args.batch}", args.batch > 1),
                                 ("padded", args.pad_batch), (f"buckets {args.shape_buckets}", bool(args.shape_buckets)),
                                 (f"posterior {args.posterior}", args.posterior != "sample")] if on]
        variants = []
        if args.compile and args.eager_first:
            variants.append(("optimised eager", replace(opt_cfg, compile=False)))
        variants.append(("optimised", opt_cfg))
        for name, cfg in variants:
            label = f"{name}: " + (", ".join(f for f in flags if not (f.startswith("compile") and not cfg.compile))
                                   or "same options as baseline")
            optimised = VideoMaMaMatter.from_modules(unet, copy.deepcopy(vae), cfg)
            warm, secs, opt_out = run_matter(optimised, clips, keys, args.iters, uint8=args.uint8)
            opt_fps = report(label, warm, secs)
            line = compile_line(optimised)
            if line:
                print(line)
            if args.stage_timing:
                print(stage_table(optimised, clips, keys, args.iters, flops_seg_scaled(flops_seg, args.batch), name,
                                  peak, n_frames))
            if args.profile and not cfg.compile:
                print(profile_decode(optimised, clips, keys, name))
            if base_out is not None:
                print(f"speed-up {name} / baseline: {opt_fps / base_fps:.2f}x")
                alpha_diff(name, opt_out)
            del optimised
        if args.mixed:
            print(mixed_workload(unet, vae, opt_cfg, args.frames, args.mixed_long_side or long_side,
                                 args.mixed_backend or args.compile_backend))
    return 0


def flops_seg_scaled(flops: dict[str, int], segments: int) -> dict[str, int]:
    """Per-call FLOPs when a call carries ``segments`` segments."""
    return {k: v * segments for k, v in flops.items()}


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
