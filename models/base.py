"""The matter contract and a name -> matter registry.

``refine(frames: uint8[T,H,W,3], masks: bool[T,H,W]) -> float32[T,H,W]`` in [0, 1].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from typing import Callable, Protocol, Sequence

import numpy as np

from mava import schema


def output_option(default, why: str = "", omit_default: bool = False):
    """A config field that changes the bytes a matter writes: it joins the shard fingerprint.

    ``omit_default``: an option added after shards were written joins the fingerprint only when it is
    set to something else than its default, so those shards (whose output the default reproduces) stay
    valid on a rerun."""
    return field(default=default, metadata={"fingerprint": True, "why": why, "omit_default": omit_default})


def runtime_option(default, why: str = ""):
    """A config field that changes speed, memory or placement, not the mattes beyond float rounding
    (or whose effect is identified otherwise, e.g. by the weights' sha256): recorded, not fingerprinted."""
    return field(default=default, metadata={"fingerprint": False, "why": why})


@dataclass
class MatterConfig:
    """Options shared by all matters; each matter reads the ones it needs.

    Every field is classified with :func:`output_option` or :func:`runtime_option` (a test enforces it):
    output options join the fingerprint that decides whether a finished shard may be kept on a rerun.
    """

    checkpoint: str | None = runtime_option(None, "VideoMaMa checkpoint folder (holds unet/); "
                                                  "identified by weights_sha256")
    base_model: str | None = runtime_option(None, "SVD base folder (holds vae/); identified by weights_sha256")
    device: str = runtime_option("auto", "auto | cpu | cuda | cuda:N; the resolved dtype is fingerprinted")
    dtype: str = output_option("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 on GPU, fp32 on CPU); "
                                       "fingerprinted resolved")
    seed: int = output_option(0, "noise seed: same seed, same mattes")
    long_side: int = output_option(1024, "model resolution: long side, both sides multiples of 64")
    segment_len: int = output_option(12, "short segments are padded to this for the model")
    batch_size: int = runtime_option(1, "segments per forward pass (may move a rare pixel by one 8-bit step)")
    decode_chunk: int = output_option(8, "VAE decode chunk (frames): the temporal decoder mixes frames only "
                                         "inside a chunk; 8 = the release (8 then 4 for 12 frames); 12 = one "
                                         "chunk per segment, a deviation from the release")
    compile: bool = runtime_option(False, "torch.compile the model parts")
    posterior: str = output_option("sample", "VAE posterior for the condition latents: sample (seeded, as "
                                             "released) | mode")
    encode_chunk: int = runtime_option(0, "VAE encode chunk (images per call); 0 = all frames+masks of a "
                                          "batch at once (the encoder is per frame)")
    compile_mode: str = runtime_option("default", "torch.compile mode: default | reduce-overhead | "
                                                  "max-autotune | max-autotune-no-cudagraphs")
    compile_parts: str = runtime_option("unet,encoder,decoder", "which parts --compile wraps (comma list)")
    cudnn_benchmark: bool = runtime_option(False, "torch.backends.cudnn.benchmark on CUDA (cuDNN autotuning)")
    channels_last: bool = runtime_option(False, "channels-last VAE end to end (Conv2d channels_last, Conv3d "
                                                "channels_last_3d: the temporal blocks' permutes stay views)")
    pin_memory: bool = runtime_option(False, "pinned host buffers + non_blocking uploads (CUDA only)")
    resize: str = output_option("keep-aspect", "keep-aspect (long side long_side, sides snapped to 64) | "
                                               "stretch (every clip to long_side x long_side*9/16, sides snapped "
                                               "to 64: the release CLI's 1024x576 at long_side 1024)")
    resample: str = output_option("torch", "torch (float bilinear, antialiased, on the model's device) | pil "
                                           "(the release: PIL bilinear on uint8 on the host; mattes made 8-bit "
                                           "at model size, then PIL bilinear to the source size as its demo)")
    mask_threshold: int | None = output_option(None, "binarise the resized mask: on the 0..255 scale, > N is "
                                                     "foreground (the release CLI: 127); None keeps it soft "
                                                     "(the release demo and training)")
    vae_dtype: str = output_option("auto", "auto | fp32 | bf16 | fp16: auto = dtype, but fp32 when dtype is fp16 "
                                           "and the VAE config says force_upcast; the release runs the VAE in "
                                           "fp16 (it ignores force_upcast); fingerprinted resolved")
    alpha_8bit: str = output_option("round", "round | truncate: alpha -> 8 bits; the release truncates "
                                             "(ToPILImage: mul(255).byte()); we round (deliberate)")
    alpha_precision: str = output_option("fp32", "fp32 | vae: dtype of the alpha map after decoding ((x/2+0.5), "
                                                 "clamp, RGB mean, x255): fp32 (ours) or the VAE's dtype, as the "
                                                 "release (fp16 there)")
    fused_group_norm: bool = runtime_option(False, "VAE GroupNorm(+SiLU) as split-reduction Triton kernels on CUDA "
                                                   "(torch elsewhere); keeps channels-last in place")
    shape_buckets: str = output_option("", "model sizes WxH (multiples of 64, comma list) or 'auto' (16:9, 9:16, "
                                           "4:3, 3:4, 1:1 at long_side): each clip is stretched to the bucket "
                                           "nearest its aspect, so compile sees few shapes; '' = aspect kept")
    pad_batch: bool = runtime_option(False, "pad a smaller last batch to batch_size with repeated segments "
                                            "(outputs dropped): one batch shape per bucket for compile")
    compile_backend: str = runtime_option("inductor", "torch.compile backend: inductor | aot_eager | eager")
    compile_cache: str = runtime_option("", "compiled artefacts shared by actors and restarts: a folder "
                                            "(inductor cache + artefact blobs) or an fsspec URL (blobs)")
    oracle_damage: str = output_option("", "oracle matter (ground truth from --checkpoint, a gt_alpha folder): "
                                           "damage its mattes with this mava.degrade alpha damage ('' = none)",
                                       omit_default=True)
    oracle_strength: float = output_option(0.0, "oracle matter: strength of oracle_damage in [0, 1]",
                                           omit_default=True)


def is_classified(f) -> bool:
    """True when a dataclass field says whether it changes output (``fingerprint`` metadata)."""
    return isinstance(f.metadata.get("fingerprint"), bool)


def output_fields(cls=MatterConfig) -> tuple[str, ...]:
    """Names of the fields of a config dataclass that change output bytes."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("fingerprint"))


def fingerprint_options(cfg, names: Sequence[str] | None = None) -> dict:
    """The output options of config ``cfg`` (only ``names`` when given) as they join a fingerprint:
    ``omit_default`` fields only when set to something else than their default."""
    out = {}
    for f in fields(cfg):
        if not f.metadata.get("fingerprint") or (names is not None and f.name not in names):
            continue
        value = getattr(cfg, f.name)
        if f.metadata.get("omit_default") and value == f.default:
            continue
        out[f.name] = value
    return out


class Matter(Protocol):
    """What the job needs of a matter. Optional, used when present: ``refine_batch_uint8(clips, keys=...)``
    (uint8 mattes; ``keys`` are the sample keys, e.g. to seed noise per sample), ``prepare_batch(clips,
    keys)`` + ``refine_prepared(staged)`` (the matter actor stages batch n+1 while batch n runs),
    ``fingerprint()``, ``describe()``."""

    name: str
    deterministic: bool

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray: ...

    def refine_batch(self, clips: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]: ...


class MatterBase:
    """Convenience base: ``refine_batch`` loops over ``refine``; input checks in one place."""

    name = "base"
    deterministic = True
    #: MatterConfig output options this matter reads (None: all of them); only these join its fingerprint
    reads: tuple[str, ...] | None = None

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

    def weights_hash(self) -> str | None:
        """sha256 of the weights the matter loaded (None for matters without weights)."""
        return None

    def resolved_options(self) -> dict:
        """Output options with ``auto`` values resolved (override where the config says ``auto``)."""
        cfg = getattr(self, "cfg", None) or MatterConfig()
        return fingerprint_options(cfg, output_fields() if self.reads is None else self.reads)

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
