"""Opt-in: run the official VideoMaMa inference, unmodified, against ours on a tiny random checkpoint.

Not part of ``make bench`` or the tests: it needs a checkout of the public release (cvlab-kaist/VideoMaMa,
passed as ``--release``; nothing of it is copied here) and its extra packages (transformers, torchvision,
einops; ``--site DIR`` adds a folder that holds them to sys.path). A CUDA torchvision wheel imports on a CPU
torch with ``--torchvision-without-ops`` (only its transforms are used).

What runs: the release's ``VideoInferencePipeline`` (``pipeline_svd_mask.py``) on frames read and
stretched by its CLI's ``load_image_sequence`` (``inference_onestep_folder.py``), with the mask binarised
at > 127 as its CLI does, then brought back to the source size with PIL bilinear as its demo does; ours
is ``VideoMaMaMatter`` with ``--preset release`` values at the same dtype. Both get the same noise: the
release draws the UNet noise from a generator seeded with its seed and the two posterior samples from the
global generator, which this script seeds just before the call and replays into ours. Then each option
of the preset is flipped alone to show what it changes. Figures are 8-bit alpha steps (0..255).

    python -m benchmarks.release_parity --release /path/to/VideoMaMa --site /path/to/extra-site-packages
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mava import lifecycle
from models.arch import build_unet, build_vae, save_variants, tiny_unet_config, tiny_vae_config
from models.base import build_matter
from models.presets import preset_config
from models.videomama import model_size

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
POSTERIOR_SEED = 1234    # the global generator's seed right before the release's run()
NOISE_SEED = 42          # the release CLI's default --seed


def import_release(release: Path, site: str | None, without_ops: bool):
    """The release's modules, imported from its checkout (plus an optional extra site folder)."""
    for p in (site, str(release)):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    if without_ops:   # a CUDA torchvision wheel on a CPU torch: skip its C-op registrations
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules.setdefault(name, types.ModuleType(name))
    import inference_onestep_folder as cli   # from the release checkout
    import pipeline_svd_mask as pipe
    return pipe, cli


def write_tiny_release_layout(root: Path, cross_dim: int) -> tuple[Path, Path]:
    """Tiny checkpoint in the release's layout: VideoMaMa ``unet/`` (plain file, as it is loaded without a
    variant), SVD base ``vae/`` with only the fp16 variant (the release loads ``variant="fp16"``; ours then
    loads the same file), and the CLIP parts its pipeline constructs (their output is zeroed)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    ckpt, base = root / "VideoMaMa", root / "svd"
    save_variants(build_unet(tiny_unet_config(), seed=0), ckpt / "unet", "plain")
    save_variants(build_vae(tiny_vae_config(), seed=1), base / "vae", "fp16")
    clip_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8, projection_dim=cross_dim)
    CLIPVisionModelWithProjection(clip_cfg).half().save_pretrained(base / "image_encoder", variant="fp16")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        base / "feature_extractor")
    return ckpt, base


def source_clip(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth colour frames with texture and a moving ellipse mask (uint8, bool)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    frames, masks = [], []
    for i in range(t):
        base = np.stack([128 + 90 * np.sin(xx / (9 + c) + i / 3 + c) * np.cos(yy / 11) for c in range(3)], -1)
        frames.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
        cy, cx = h * (0.45 + 0.02 * i), w * (0.4 + 0.015 * i)
        masks.append(((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.22 * w)) ** 2 < 1)
    return np.stack(frames), np.stack(masks)


def run_release(pipe_mod, cli_mod, folder: Path, ckpt: Path, base: Path, t: int, size_hw, src_hw, dtype):
    """uint8[T,H,W] alpha from the release code, at the source size (its demo's PIL resize back)."""
    h, w = size_hw
    cond, masks = cli_mod.load_image_sequence(str(folder / "image" / "v"), str(folder / "mask" / "v"), t, t, w, h,
                                              keep_aspect_ratio=False)
    masks = [m.point(lambda p: 255 if p > 127 else 0, mode="L") for m in masks]   # the CLI's re-threshold
    pipeline = pipe_mod.VideoInferencePipeline(str(base), str(ckpt), device="cpu", weight_dtype=dtype)
    torch.manual_seed(POSTERIOR_SEED)
    out = pipeline.run(cond_frames=cond, mask_frames=masks, seed=NOISE_SEED, mask_cond_mode="vae")
    src_h, src_w = src_hw
    return np.stack([np.asarray(o.resize((src_w, src_h), Image.Resampling.BILINEAR))[..., 0] for o in out])


def replayed_noise(t: int, size_hw, dtype):
    """The draws the release makes: (UNet noise, frame posterior eps, mask posterior eps), each [T,4,h,w]."""
    shape = (t, 4, size_hw[0] // 8, size_hw[1] // 8)
    g = torch.Generator().manual_seed(POSTERIOR_SEED)        # = the global generator after manual_seed
    eps_f = torch.randn(shape, generator=g, dtype=dtype)
    eps_m = torch.randn(shape, generator=g, dtype=dtype)
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(NOISE_SEED), dtype=dtype)[0]
    return noise.float(), eps_f.float(), eps_m.float()


def run_ours(cfg, frames, masks, draws) -> np.ndarray:
    m = build_matter("videomama", cfg)
    m._noise = lambda seed, tp, lh, lw: draws    # replay the release's draws (this check only)
    return m.refine_batch_uint8([(frames, masks)])[0]


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.release_parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--release", required=True, type=Path, help="checkout of cvlab-kaist/VideoMaMa")
    p.add_argument("--site", default=None, help="extra sys.path folder holding transformers, torchvision, einops")
    p.add_argument("--torchvision-without-ops", action="store_true",
                   help="import a torchvision whose C ops cannot load (CUDA wheel, CPU torch)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="both sides' UNet and VAE dtype")
    p.add_argument("--frames", type=int, default=12, help="frames in the segment")
    p.add_argument("--source", default="90x150", help="source clip size HxW")
    p.add_argument("--long-side", type=int, default=128, help="model width (stretch: long_side x long_side*9/16)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pipe_mod, cli_mod = import_release(args.release, args.site, args.torchvision_without_ops)
    dtype, t = DTYPES[args.dtype], args.frames
    src_h, src_w = (int(v) for v in args.source.split("x"))
    frames, masks = source_clip(t, src_h, src_w)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, base = write_tiny_release_layout(root, tiny_unet_config()["cross_attention_dim"])
        for sub, arrays in (("image", frames), ("mask", masks.astype(np.uint8) * 255)):
            (root / sub / "v").mkdir(parents=True)
            for i, a in enumerate(arrays):
                Image.fromarray(a).save(root / sub / "v" / f"{i:05d}.png")
        cfg = preset_config("release", checkpoint=str(ckpt), base_model=str(base), device="cpu",
                            long_side=args.long_side, segment_len=t, dtype=args.dtype, vae_dtype=args.dtype)
        size_hw = model_size(src_h, src_w, args.long_side, resize="stretch")
        release = run_release(pipe_mod, cli_mod, root, ckpt, base, t, size_hw, (src_h, src_w), dtype)
        draws = replayed_noise(t, size_hw, dtype)
        print(f"release vs ours, tiny checkpoint, {t} frames {src_h}x{src_w} -> model {size_hw[0]}x{size_hw[1]}, "
              f"{args.dtype}, same noise; |alpha difference| in 8-bit steps")
        print(f"{'ours':<40} {'max':>5} {'mean':>8} {'pixels that differ':>20}")
        variants = [("--preset release", {}), ("  but --decode-chunk 12", {"decode_chunk": 12}),
                    ("  but --mask-threshold none (soft)", {"mask_threshold": None}),
                    ("  but --resample torch", {"resample": "torch"}),
                    ("  but --alpha-8bit round", {"alpha_8bit": "round"}),
                    ("  but --alpha-precision fp32", {"alpha_precision": "fp32"})]
        for name, change in variants:
            ours = run_ours(dataclasses.replace(cfg, **change), frames, masks, draws)
            d = np.abs(ours.astype(int) - release.astype(int))
            print(f"{name:<40} {d.max():>5} {d.mean():>8.5f} {f'{np.count_nonzero(d)} of {d.size}':>20}")
    return 0


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
