"""The matter contract and a name -> matter registry.

``refine(frames: uint8[T,H,W,3], masks: bool[T,H,W]) -> float32[T,H,W]`` in [0, 1].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np


@dataclass
class MatterConfig:
    """Options shared by all matters; each matter reads the ones it needs."""

    checkpoint: str | None = None     # VideoMaMa checkpoint folder (holds unet/)
    base_model: str | None = None     # SVD base folder (holds vae/)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    dtype: str = "auto"               # auto | fp32 | bf16 | fp16 (auto: bf16 on GPU, fp32 on CPU)
    seed: int = 0                     # noise seed: same seed, same mattes
    long_side: int = 1024             # model resolution: long side, both sides multiples of 64
    segment_len: int = 12             # short segments are padded to this for the model
    batch_size: int = 1               # segments per forward pass
    decode_chunk: int = 12            # VAE decode chunk (frames)
    compile: bool = False             # torch.compile the model parts
    # --- added for the VideoMaMa matter and its speed options (issue 6); defaults keep the plain path ---
    posterior: str = "sample"         # VAE posterior for the condition latents: sample (seeded, as released) | mode
    encode_chunk: int = 0             # VAE encode chunk (images per call); 0 = all frames+masks of a batch at once
    compile_mode: str = "default"     # torch.compile mode: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_parts: str = "unet,encoder,decoder"  # which parts --compile wraps (comma list)
    cudnn_benchmark: bool = False     # torch.backends.cudnn.benchmark on CUDA (cuDNN autotuning)
    channels_last: bool = False       # channels-last memory format for the VAE's 2-D convolutions
    pin_memory: bool = False          # pinned host buffers + non_blocking uploads (CUDA only)


class Matter(Protocol):
    name: str
    deterministic: bool

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray: ...

    def refine_batch(self, clips: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]: ...


class MatterBase:
    """Convenience base: ``refine_batch`` loops over ``refine``; input checks in one place."""

    name = "base"
    deterministic = True

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def refine_batch(self, clips: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [self.refine(f, m) for f, m in clips]

    def refine_batch_uint8(self, clips: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Like ``refine_batch`` but alpha as uint8[T,H,W] (0..255, rounded), what the writer stores."""
        return [to_uint8(a) for a in self.refine_batch(clips)]

    def params(self) -> dict:
        """Matter-specific settings recorded in run.json (override in subclasses)."""
        return {}

    def describe(self) -> dict:
        """What produced the mattes, for run.json: name, determinism and the matter's settings."""
        return {"name": self.name, "deterministic": self.deterministic, **self.params()}

    @staticmethod
    def check_inputs(frames: np.ndarray, masks: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8[T,H,W,3], got {frames.dtype}{list(frames.shape)}")
        if masks.shape != frames.shape[:3]:
            raise ValueError(f"masks {list(masks.shape)} do not match frames {list(frames.shape[:3])}")


def to_uint8(alpha: np.ndarray) -> np.ndarray:
    """float alpha in [0,1] -> uint8 0..255 (rounded)."""
    return np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)


# name -> "module:factory"; factories take a MatterConfig. Imported lazily (diffusers is heavy).
_REGISTRY: dict[str, str] = {
    "mask": "models.cpu:MaskMatter",
    "guided": "models.cpu:GuidedMatter",
    "closed-form": "models.cpu:ClosedFormMatter",
    "videomama": "models.videomama:VideoMaMaMatter",
}


def available_matters() -> list[str]:
    return sorted(_REGISTRY)


def register_matter(name: str, target: str) -> None:
    """Register ``"module:factory"`` under ``name``."""
    _REGISTRY[name] = target


def matter_factory(name: str) -> Callable[[MatterConfig], Matter]:
    """The factory registered under ``name``; ``"package.module:Factory"`` names a custom matter."""
    if name not in _REGISTRY and ":" not in name:
        raise KeyError(f"unknown matter {name!r}; choose one of {available_matters()} or 'module:Factory'")
    module, attr = _REGISTRY.get(name, name).split(":")
    return getattr(importlib.import_module(module), attr)


def build_matter(name: str, config: MatterConfig | None = None) -> Matter:
    """Instantiate the matter registered under ``name``."""
    return matter_factory(name)(config or MatterConfig())
