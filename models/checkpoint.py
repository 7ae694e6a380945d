"""VideoMaMa checkpoints: find the model folders, pick the weight files diffusers will load (plain or
``fp16`` variant, sharded or not), refuse the wrong model, and hash exactly the files loaded
(``weights_sha256``, the identity of the mattes in the shard fingerprint)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from models.arch import SVD_BASE_IN_CHANNELS, VIDEOMAMA_IN_CHANNELS
from models.base import MatterConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_STEM = "diffusion_pytorch_model"   # diffusers' weight file name (+ .<variant>) + .safetensors/.bin
VARIANTS = ("plain", "fp16")               # plain = no variant in the file name

HOW_TO_GET_WEIGHTS = (
    "Get the VideoMaMa checkpoint folder (its unet/ has 12 input channels) from the VideoMaMa release and "
    "the SVD base (its vae/) from stabilityai/stable-video-diffusion-img2vid-xt on the Hugging Face Hub; "
    "pass them as --checkpoint and --base-model. For a CPU smoke run: python -m models.tiny --out DIR."
)


class CheckpointError(RuntimeError):
    """The model folders are missing or hold the wrong model."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """A model folder does not exist."""




def resolve_folders(cfg: MatterConfig) -> tuple[Path, Path]:
    """(unet_dir, vae_dir) from the config, with errors that say what to pass and where to get it."""
    if not cfg.checkpoint:
        raise CheckpointMissing(f"videomama needs --checkpoint (a folder holding unet/). {HOW_TO_GET_WEIGHTS}")
    ckpt = Path(cfg.checkpoint)
    unet_dir = ckpt / "unet"
    if not unet_dir.is_dir():
        raise CheckpointMissing(f"VideoMaMa UNet folder not found: {unet_dir}. {HOW_TO_GET_WEIGHTS}")
    if cfg.base_model:
        vae_dir = Path(cfg.base_model) / "vae"
    elif (ckpt / "vae").is_dir():
        vae_dir = ckpt / "vae"
    else:
        raise CheckpointMissing(f"videomama needs --base-model (the SVD base folder holding vae/). {HOW_TO_GET_WEIGHTS}")
    if not vae_dir.is_dir():
        raise CheckpointMissing(f"SVD VAE folder not found: {vae_dir}. {HOW_TO_GET_WEIGHTS}")
    return unet_dir, vae_dir


def check_unet_channels(in_channels: int, where: str) -> None:
    if in_channels == SVD_BASE_IN_CHANNELS:
        raise CheckpointError(
            f"{where} is the SVD base UNet (conv_in has {SVD_BASE_IN_CHANNELS} input channels), not VideoMaMa. "
            f"Pass the VideoMaMa checkpoint folder (its unet/ has {VIDEOMAMA_IN_CHANNELS} input channels) as "
            f"--checkpoint and the SVD base folder (stabilityai/stable-video-diffusion-img2vid-xt) as --base-model."
        )
    if in_channels != VIDEOMAMA_IN_CHANNELS:
        raise CheckpointError(
            f"{where}: UNet conv_in has {in_channels} input channels, VideoMaMa needs {VIDEOMAMA_IN_CHANNELS} "
            f"(noise + frame latent + mask latent). {HOW_TO_GET_WEIGHTS}"
        )


@dataclass(frozen=True)
class WeightFiles:
    """The files of one diffusers model folder that ``from_pretrained`` reads for the chosen variant."""

    folder: Path
    variant: str                 # "plain" | "fp16"
    files: tuple[Path, ...]      # one weight file, or a shard index followed by its shards
    safetensors: bool

    @property
    def diffusers_variant(self) -> str | None:
        return None if self.variant == "plain" else self.variant

    @property
    def config(self) -> Path:
        return self.folder / CONFIG_NAME

    def describe(self) -> dict:
        return {"folder": str(self.folder), "variant": self.variant, "files": [p.name for p in self.files]}


def _with_variant(name: str, variant: str) -> str:
    """diffusers' naming: the variant goes before the last suffix (``x.safetensors`` -> ``x.fp16.safetensors``)."""
    if variant == "plain":
        return name
    head, _, tail = name.rpartition(".")
    return f"{head}.{variant}.{tail}"


def _variant_files(folder: Path, variant: str) -> WeightFiles | None:
    """The files diffusers would load for ``variant``: a safetensors shard index with its shards, one
    safetensors file, or (legacy) one ``.bin``; None when the folder has none of them."""
    index = folder / _with_variant(f"{WEIGHTS_STEM}.safetensors.index.json", variant)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing in {folder}: {missing}")
        return WeightFiles(folder, variant, (index, *(folder / s for s in shards)), True)
    for suffix, safe in ((".safetensors", True), (".bin", False)):
        path = folder / _with_variant(WEIGHTS_STEM + suffix, variant)
        if path.is_file():
            return WeightFiles(folder, variant, (path,), safe)
    return None


def _check_not_lfs_pointer(path: Path) -> None:
    if path.stat().st_size < 1024 and path.read_bytes().startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in that clone "
                              f"(or download the file itself)")


EXPECTED_FILES = (f"expected {CONFIG_NAME} and {WEIGHTS_STEM}.safetensors (plain) and/or "
                  f"{WEIGHTS_STEM}.fp16.safetensors (fp16 variant) -- or a sharded "
                  f"{WEIGHTS_STEM}.safetensors.index[.fp16].json with its shards, or legacy .bin files")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def require_config(folder: Path, what: str) -> None:
    """A model folder must hold ``config.json``; the error lists what it holds and what is expected."""
    found = _listing(Path(folder))
    if CONFIG_NAME not in found:
        raise CheckpointError(f"{what} folder {folder} has no {CONFIG_NAME}; found {found or 'no files'}; "
                              f"{EXPECTED_FILES}. {HOW_TO_GET_WEIGHTS}")


def select_weights(folder: Path, dtype: torch.dtype, what: str) -> WeightFiles:
    """Which weight files of a published diffusers folder to load: the ``fp16`` variant first when the
    model runs in fp16, the plain file first otherwise, falling back to the other one. Raises a
    :class:`CheckpointError` that lists the folder's files and what is expected when neither is there."""
    folder = Path(folder)
    prefer = ("fp16", "plain") if dtype == torch.float16 else ("plain", "fp16")
    require_config(folder, what)
    for variant in prefer:
        chosen = _variant_files(folder, variant)
        if chosen is not None:
            for path in chosen.files:
                _check_not_lfs_pointer(path)
            if variant != prefer[0]:
                log.info("%s: no %s weights in %s, loading the %s files %s", what, prefer[0], folder, variant,
                         [p.name for p in chosen.files])
            return chosen
    raise CheckpointError(f"{what} folder {folder} holds no weight file diffusers can load; found "
                          f"{_listing(folder)}; {EXPECTED_FILES}. {HOW_TO_GET_WEIGHTS}")


def weights_sha256(selected: Sequence[WeightFiles]) -> str:
    """sha256 over the files actually loaded: per folder its config and the chosen weight files (names and
    contents), so the plain and the fp16 files of one checkpoint hash differently, and an unused variant
    lying beside them does not count."""
    h = hashlib.sha256()
    for wf in selected:
        for path in (wf.config, *wf.files):
            h.update(f"{wf.folder.name}/{path.name}\0".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(8 << 20), b""):
                    h.update(block)
    return h.hexdigest()
