"""Write a tiny random VideoMaMa checkpoint + SVD base VAE in the release folder layout.

``python -m models.tiny --out DIR`` -> ``DIR/checkpoint/unet`` (12-channel conv_in) and ``DIR/base/vae``.
Used by tests and CPU smoke runs: same diffusers classes as the real weights, tiny channels.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.arch import (VIDEOMAMA_IN_CHANNELS, build_unet, build_vae, tiny_unet_config,
                         tiny_vae_config, write_checkpoint)

log = logging.getLogger(__name__)


def make_tiny(out: str | Path, seed: int = 0, in_channels: int = VIDEOMAMA_IN_CHANNELS) -> tuple[Path, Path]:
    """Write the tiny checkpoint; returns (checkpoint_dir, base_model_dir)."""
    unet = build_unet(tiny_unet_config(in_channels), seed=seed)
    vae = build_vae(tiny_vae_config(), seed=seed + 1)
    return write_checkpoint(out, unet, vae)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets checkpoint/unet and base/vae)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    p.add_argument("--in-channels", type=int, default=VIDEOMAMA_IN_CHANNELS,
                   help="UNet conv_in channels: 12 = VideoMaMa, 8 = an SVD base UNet (for error tests)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ckpt, base = make_tiny(args.out, args.seed, args.in_channels)
    print(f"--checkpoint {ckpt} --base-model {base}")


if __name__ == "__main__":
    main()
