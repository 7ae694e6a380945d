"""Architecture configs for the VideoMaMa matter: the real SVD img2vid-xt sizes and a tiny test size.

The real values are those of ``stabilityai/stable-video-diffusion-img2vid-xt`` (``unet/config.json``,
``vae/config.json``) with ``conv_in`` widened to 12 input channels as in the VideoMaMa release.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

VIDEOMAMA_IN_CHANNELS = 12   # noise (4) + frame latent (4) + mask latent (4)
SVD_BASE_IN_CHANNELS = 8     # noise (4) + image latent (4): the SVD base UNet


def full_unet_config(in_channels: int = VIDEOMAMA_IN_CHANNELS) -> dict[str, Any]:
    """UNetSpatioTemporalConditionModel config of SVD img2vid-xt (conv_in widened to ``in_channels``)."""
    return dict(
        sample_size=96, in_channels=in_channels, out_channels=4,
        down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
        up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
        block_out_channels=[320, 640, 1280, 1280], addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=768, layers_per_block=2, cross_attention_dim=1024,
        transformer_layers_per_block=1, num_attention_heads=[5, 10, 20, 20], num_frames=25,
    )


def full_vae_config() -> dict[str, Any]:
    """AutoencoderKLTemporalDecoder config of SVD img2vid-xt."""
    return dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
        sample_size=768, scaling_factor=0.18215, force_upcast=True,
    )


def tiny_unet_config(in_channels: int = VIDEOMAMA_IN_CHANNELS) -> dict[str, Any]:
    """Same class and block types family as the real UNet, two levels, tiny channels."""
    return dict(
        sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        up_block_types=["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        block_out_channels=[32, 64], addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, layers_per_block=1, cross_attention_dim=32,
        transformer_layers_per_block=1, num_attention_heads=[2, 4], num_frames=12,
    )


def tiny_vae_config() -> dict[str, Any]:
    """Four levels (8x downsampling like the real VAE), 32 channels (GroupNorm needs multiples of 32)."""
    return dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=4,
        sample_size=64, scaling_factor=0.18215, force_upcast=True,
    )


def build_unet(config: dict[str, Any], seed: int = 0):
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(seed)
    return UNetSpatioTemporalConditionModel(**config)


def build_vae(config: dict[str, Any], seed: int = 0):
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    return AutoencoderKLTemporalDecoder(**config)


WEIGHT_VARIANTS = ("plain", "fp16", "both")


def save_variants(model, folder: str | Path, variants: str = "plain") -> None:
    """``save_pretrained`` in the published layouts: ``plain`` = ``diffusion_pytorch_model.safetensors`` (the
    model's dtype), ``fp16`` = only ``diffusion_pytorch_model.fp16.safetensors`` holding fp16 weights (as the
    Hub's ``fp16`` variants), ``both`` = the two files side by side (as the SVD base folder)."""
    if variants not in WEIGHT_VARIANTS:
        raise ValueError(f"variants must be one of {WEIGHT_VARIANTS}, got {variants!r}")
    if variants in ("plain", "both"):
        model.save_pretrained(folder)
    if variants in ("fp16", "both"):
        copy.deepcopy(model).half().save_pretrained(folder, variant="fp16")   # the model itself stays as it is


def write_checkpoint(out: str | Path, unet, vae, unet_variants: str = "plain",
                     vae_variants: str = "plain") -> tuple[Path, Path]:
    """Save in the release layout: ``<out>/checkpoint/unet`` and ``<out>/base/vae`` (each with the weight files
    :func:`save_variants` names); returns (checkpoint, base)."""
    out = Path(out)
    ckpt, base = out / "checkpoint", out / "base"
    save_variants(unet, ckpt / "unet", unet_variants)
    save_variants(vae, base / "vae", vae_variants)
    return ckpt, base
