"""Write a tiny random VideoMaMa checkpoint + SVD base VAE in the release folder layout.

``python -m models.tiny --out DIR`` -> ``DIR/checkpoint/unet`` (12-channel conv_in) and ``DIR/base/vae``.
``--variant fp16`` writes only the ``fp16``-variant files (``diffusion_pytorch_model.fp16.safetensors``,
fp16 weights), ``--variant both`` the plain and the fp16 file side by side (the SVD base's layout);
``--vae-variant`` sets the VAE's apart. Used by tests and CPU smoke runs: same diffusers classes as the
real weights, tiny channels.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mava import lifecycle
from models.arch import (VIDEOMAMA_IN_CHANNELS, WEIGHT_VARIANTS, build_unet, build_vae, tiny_unet_config,
                         tiny_vae_config, write_checkpoint)

log = logging.getLogger(__name__)


def make_tiny(out: str | Path, seed: int = 0, in_channels: int = VIDEOMAMA_IN_CHANNELS, variant: str = "plain",
              vae_variant: str | None = None) -> tuple[Path, Path]:
    """Write the tiny checkpoint (weight files per ``variant``: plain | fp16 | both; the VAE's per
    ``vae_variant``, default the same); returns (checkpoint_dir, base_model_dir)."""
    unet = build_unet(tiny_unet_config(in_channels), seed=seed)
    vae = build_vae(tiny_vae_config(), seed=seed + 1)
    return write_checkpoint(out, unet, vae, variant, vae_variant or variant)


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m models.tiny", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("an unexpected error, with its traceback"))
    p.add_argument("--out", required=True, help="output folder (gets checkpoint/unet and base/vae)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    p.add_argument("--in-channels", type=int, default=VIDEOMAMA_IN_CHANNELS,
                   help="UNet conv_in channels: 12 = VideoMaMa, 8 = an SVD base UNet (for error tests)")
    p.add_argument("--variant", choices=WEIGHT_VARIANTS, default="plain",
                   help="weight files: plain (diffusion_pytorch_model.safetensors), fp16 (only "
                        "diffusion_pytorch_model.fp16.safetensors, fp16 weights) or both side by side")
    p.add_argument("--vae-variant", choices=WEIGHT_VARIANTS, default=None,
                   help="weight files of base/vae (default: --variant); the SVD base publishes both")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.in_channels < 1:
        p.error(f"--in-channels must be at least 1, not {args.in_channels}")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"cannot write to --out {args.out}: {exc.strerror or exc}")
    ckpt, base = make_tiny(args.out, args.seed, args.in_channels, args.variant, args.vae_variant)
    print(f"--checkpoint {ckpt} --base-model {base}")
    return lifecycle.EXIT_OK


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
