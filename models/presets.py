"""Named sets of MatterConfig values (torch-free, so the CLI can list them in ``--help``).

``release`` reproduces the official VideoMaMa inference CLI (cvlab-kaist/VideoMaMa,
``inference_onestep_folder.py`` with its defaults): every clip stretched to 1024x576 with PIL bilinear
on uint8, the mask re-thresholded at 127 after resizing, UNet and VAE in fp16, decode in chunks of 8
frames, the alpha map computed in the VAE's dtype and truncated to 8 bits. ``default`` is the project's own choice (aspect kept, soft masks,
bf16 on GPU, rounding). What stays different even under ``release`` (per-sample noise seeds, mattes
written at the source size) is listed in the README section "Release parity".
"""

from __future__ import annotations

from typing import Any

from models.base import MatterConfig

MATTER_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "release": {
        "resize": "stretch", "long_side": 1024, "resample": "pil", "mask_threshold": 127,
        "dtype": "fp16", "vae_dtype": "fp16", "decode_chunk": 8, "posterior": "sample",
        "alpha_8bit": "truncate", "alpha_precision": "vae",
    },
}


def preset_options(name: str) -> dict[str, Any]:
    """The MatterConfig values a preset sets (a copy); KeyError names the known presets."""
    if name not in MATTER_PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(MATTER_PRESETS)}")
    return dict(MATTER_PRESETS[name])


def preset_config(name: str, **overrides: Any) -> MatterConfig:
    """A MatterConfig with the preset's values; ``overrides`` (explicit choices) win over the preset."""
    return MatterConfig(**{**preset_options(name), **overrides})


def describe_preset(name: str) -> str:
    """``key=value`` list of a preset, for help texts."""
    opts = preset_options(name)
    return ", ".join(f"{k}={v}" for k, v in opts.items()) or "the MatterConfig defaults"


def differences(cfg: MatterConfig, name: str = "release") -> dict[str, tuple[Any, Any]]:
    """Options of ``cfg`` that differ from the preset: ``{field: (cfg value, preset value)}``."""
    want = preset_options(name)
    return {k: (getattr(cfg, k), v) for k, v in want.items() if getattr(cfg, k) != v}
