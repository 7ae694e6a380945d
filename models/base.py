"""The matter contract and a name -> matter registry.

``refine(frames: uint8[T,H,W,3], masks: bool[T,H,W]) -> float32[T,H,W]`` in [0, 1]; the job calls one
batched method, ``refine_batch_uint8(clips, keys)`` (see :class:`Matter`).
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from mava import schema
from models.options import (  # noqa: F401  (is_classified, fingerprint_options: re-exported)
    fingerprint_options, int_at_least, is_classified, number_at_least, output_option, runtime_option,
)
from models.options import configured_fields as _configured_fields
from models.options import output_fields as _output_fields


def _long_side(text: str) -> int:
    v = int_at_least(64)(text)
    if v % 64:
        raise argparse.ArgumentTypeError(f"{v} is not a multiple of 64 (the model's latent grid)")
    return v


def _mask_threshold(text: str) -> int | None:
    """'none' or an integer 0..254."""
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'none' or 0..254, got {text!r}") from None
    if not 0 <= value <= 254:
        raise argparse.ArgumentTypeError(f"must be 'none' or 0..254, got {value}")
    return value


DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class MatterConfig:
    """Options shared by all matters; each matter reads the ones it needs.

    Every field is classified with :func:`output_option` or :func:`runtime_option` (a test enforces it):
    output options join the fingerprint that decides whether a finished shard may be kept on a rerun.
    Each field's metadata is also its ``python -m pipeline.run`` flag.
    """

    checkpoint: str | None = runtime_option(None, "VideoMaMa checkpoint folder (holds unet/); identified by "
                                                  "weights_sha256")
    base_model: str | None = runtime_option(None, "Stable Video Diffusion base folder (holds vae/); identified "
                                                  "by weights_sha256")
    device: str = runtime_option("auto", "auto, cpu, cuda or cuda:N; the resolved dtype is fingerprinted")
    dtype: str = output_option("auto", "UNet dtype; auto = bf16 on GPU, fp32 on CPU (fingerprinted resolved)",
                               choices=DTYPES, resolved=True)
    seed: int = output_option(0, "noise seed: same seed, same mattes")
    long_side: int = output_option(1024, "model resolution: long side in pixels (both sides multiples of 64)",
                                   parse=_long_side)
    segment_len: int = output_option(12, "short segments are padded to this for the model (the reader's "
                                         "--segment-len)", flag=False)
    batch_size: int = runtime_option(1, "segments per forward pass (may move a rare pixel by one 8-bit step)",
                                     parse=int_at_least(1))
    decode_chunk: int = output_option(8, "VAE decode chunk in frames; the temporal decoder mixes frames only "
                                         "inside a chunk, so this changes the mattes: 8 = the release (8 then 4 "
                                         "for 12 frames); 12 or 0 (whole segment) deviate from it",
                                      parse=int_at_least(0))
    compile: bool = runtime_option(False, "torch.compile the model parts (slow first batch)")
    posterior: str = output_option("sample", "VAE posterior of the condition latents: seeded sample (as "
                                             "released) or mode", choices=("sample", "mode"))
    encode_chunk: int = runtime_option(0, "VAE encode chunk (images per call); 0 = all frames+masks of a "
                                          "batch at once (the encoder is per frame)", parse=int_at_least(0))
    compile_mode: str = runtime_option("default", "torch.compile mode (with --compile)",
                                       choices=("default", "reduce-overhead", "max-autotune",
                                                "max-autotune-no-cudagraphs"))
    compile_parts: str = runtime_option("unet,encoder,decoder", "which parts --compile wraps (comma list)")
    cudnn_benchmark: bool = runtime_option(False, "torch.backends.cudnn.benchmark on CUDA (cuDNN autotuning)")
    channels_last: bool = runtime_option(False, "channels-last VAE end to end (Conv2d channels_last, Conv3d "
                                                "channels_last_3d: the temporal blocks' permutes stay views)")
    pin_memory: bool = runtime_option(False, "pinned host buffers + non-blocking uploads (CUDA only)")
    resize: str = output_option("keep-aspect", "keep-aspect: long side --long-side, sides snapped to 64; "
                                               "stretch: every clip to --long-side x --long-side*9/16, sides "
                                               "snapped to 64 (the release CLI's 1024x576), aspect not kept",
                                choices=("keep-aspect", "stretch"))
    resample: str = output_option("torch", "torch: float bilinear (antialiased) on the model's device; pil: PIL "
                                           "bilinear on uint8 on the host, mattes 8-bit at model size then PIL "
                                           "back to the source size (the release)", choices=("torch", "pil"))
    mask_threshold: int | None = output_option(None, "binarise the resized mask (0..255 scale, > N is "
                                                     "foreground) as the release CLI does at 127, or 'none' to keep "
                                                     "it soft as its demo and training", parse=_mask_threshold,
                                               metavar="{none,0..254}")
    vae_dtype: str = output_option("auto", "VAE dtype; auto = --dtype, but fp32 when that is fp16 and the VAE "
                                           "config asks for upcasting (the release runs it in fp16 regardless); "
                                           "fingerprinted resolved", choices=DTYPES, resolved=True)
    alpha_8bit: str = output_option("round", "alpha to 8 bits: round (ours), or truncate as the release "
                                             "(ToPILImage: mul(255).byte())", choices=("round", "truncate"))
    alpha_precision: str = output_option("fp32", "dtype of the alpha map after decoding (x/2+0.5, clamp, RGB "
                                                 "mean, x255): fp32 (ours), or the VAE's dtype as the release "
                                                 "(fp16 there)", choices=("fp32", "vae"))
    fused_group_norm: bool = runtime_option(False, "VAE GroupNorm(+SiLU) as split-reduction Triton kernels on CUDA "
                                                   "(torch elsewhere); speed only, within float rounding")
    shape_buckets: str = output_option("", "model sizes WxH (multiples of 64, comma list) or 'auto' (16:9, 9:16, "
                                           "4:3, 3:4, 1:1 at --long-side): each clip is stretched to the bucket "
                                           "nearest its aspect, so --compile sees few shapes; '' keeps each "
                                           "clip's aspect", resolved=True)
    pad_batch: bool = runtime_option(False, "pad a smaller last batch to --batch-size with repeated segments "
                                            "(outputs dropped): one compiled batch shape per bucket")
    compile_backend: str = runtime_option("inductor", "torch.compile backend (with --compile)",
                                          choices=("inductor", "aot_eager", "eager"))
    compile_cache: str = runtime_option("", "folder or fsspec URL shared by every actor and restart for "
                                            "compiled artefacts (with --compile): a restarted actor loads them "
                                            "instead of compiling again")
    oracle_damage: str = output_option("", "oracle matter (ground truth from --checkpoint, a gt_alpha folder): "
                                           "damage its mattes with this mava.degrade alpha damage ('' = none)",
                                       omit_default=True)
    oracle_strength: float = output_option(0.0, "oracle matter: strength of --oracle-damage in [0, 1]",
                                           parse=number_at_least(0), omit_default=True)
    extra: dict = output_option(dict, "options of a custom matter (--matter-option KEY=VALUE, values as strings); "
                                      "fingerprinted only for matters whose ``reads`` lists 'extra'", flag=False)


def output_fields(cls=MatterConfig) -> tuple[str, ...]:
    """Names of the fields of a config dataclass that change output bytes."""
    return _output_fields(cls)


def configured_fields(cls=MatterConfig) -> tuple[str, ...]:
    """Output options a matter fingerprints exactly as configured (all but the ``resolved`` ones): a
    rerun that changes one of them can be refused before any matter loads."""
    return _configured_fields(cls)


Clip = tuple[np.ndarray, np.ndarray]   # (frames uint8[T,H,W,3], masks bool[T,H,W])


class Matter(Protocol):
    """What the job needs of a matter (:class:`MatterBase` implements all of it from ``refine``)."""

    name: str
    deterministic: bool

    def refine_batch_uint8(self, clips: Sequence[Clip], keys: Sequence[str]) -> list[np.ndarray]:
        """The one way in: uint8[T,H,W] mattes (0..255) of a batch; ``keys`` are the sample keys (e.g. to
        seed noise per sample, so a matte does not depend on batching)."""

    def prepare_batch(self, clips: Sequence[Clip], keys: Sequence[str]) -> object | None:
        """Stage what a batch needs before the model (host resizing, uploads, noise), or None when the
        matter stages nothing; the matter actor stages batch n+1 while batch n runs."""

    def refine_prepared(self, staged: object) -> list[np.ndarray]:
        """The mattes of a batch staged by :meth:`prepare_batch` (as ``refine_batch_uint8``)."""

    def fingerprint(self) -> dict:
        """The mattes' identity: name, weights sha256, output options (resolved), constants."""

    def describe(self) -> dict:
        """What produced the mattes, for run.json."""


class MatterBase:
    """Base of the matters: the :class:`Matter` contract from a per-clip ``refine``; input checks in one
    place. Override ``refine_batch_uint8`` for a batched model, ``prepare_batch``/``refine_prepared`` to
    stage batches."""

    name = "base"
    deterministic = True
    #: MatterConfig output options this matter reads (None: all of them but ``extra``); only these join
    #: its fingerprint
    reads: tuple[str, ...] | None = None

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def refine_batch(self, clips: Sequence[Clip], keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """float mattes of a batch (``refine`` per clip)."""
        return [self.refine(f, m) for f, m in clips]

    def refine_batch_uint8(self, clips: Sequence[Clip], keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """Like ``refine_batch`` but alpha as uint8[T,H,W] (0..255, rounded), what the writer stores."""
        return [a if a.dtype == np.uint8 else to_uint8(a) for a in self.refine_batch(clips, keys)]

    def prepare_batch(self, clips: Sequence[Clip], keys: Sequence[str]) -> object | None:
        """No staging by default."""
        return None

    def refine_prepared(self, staged: object) -> list[np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} stages no batches")

    def params(self) -> dict:
        """Matter-specific settings recorded in run.json (override in subclasses)."""
        return {}

    def describe(self) -> dict:
        """What produced the mattes, for run.json: name, determinism and the matter's settings."""
        return {"name": self.name, "deterministic": self.deterministic, **self.params()}

    def weights_hash(self) -> str | None:
        """sha256 of the weights the matter loaded (None for matters without weights)."""
        return None

    def resolved_options(self) -> dict:
        """Output options with ``auto`` values resolved (override where the config says ``auto``)."""
        cfg = getattr(self, "cfg", None) or MatterConfig()
        names = tuple(n for n in output_fields() if n != "extra") if self.reads is None else self.reads
        return fingerprint_options(cfg, names)

    def constants(self) -> dict:
        """Fixed parameters in code that shape the mattes (e.g. a filter radius); default: none."""
        return {}

    def fingerprint(self) -> dict:
        """The mattes' identity: name, weights sha256, output options (resolved) and constants.
        Two runs whose fingerprints are equal write the same mattes."""
        return {schema.FP_NAME: self.name, schema.FP_WEIGHTS: self.weights_hash(),
                schema.FP_OPTIONS: self.resolved_options(), schema.FP_CONSTANTS: self.constants()}

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
    "oracle": "models.oracle:OracleMatter",
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
