"""VideoMaMa: one-step, mask-conditioned Stable Video Diffusion matter (diffusers).

Per batch of segments (DESIGN.md "The matter contract"): frames and masks (3 channels) in [-1, 1] are
VAE-encoded per frame (posterior sampled with a seeded generator, or its mode), the condition latents
are used unscaled; the UNet sees concat(noise, frame latent, mask latent) on channels, zero encoder
states [B,1,cross_dim], added_time_ids [7,127,0] and timestep 1. Its output is the clean scaled latent:
divide by the VAE scaling factor, decode with num_frames=T (in chunks), map (x/2+0.5).clamp(0,1) and
average RGB. The model runs at an aspect-keeping size (long side ``long_side``, both sides multiples
of 64) and the matte is resized back to the source size on the model's device.

Noise is a pure function of (config seed, sample): each segment gets its own CPU generator seeded from
the config seed and the sample's key (or, when no key is given, a hash of its masks), so reruns,
batch composition and batch order never change a matte.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.arch import SVD_BASE_IN_CHANNELS, VIDEOMAMA_IN_CHANNELS
from models.base import MatterBase, MatterConfig
from models.compile_cache import bucket_size, compile_parts, format_buckets, pad_indices, parse_buckets
from models.groupnorm import fuse_group_norms
from models.vae_layout import to_channels_last

log = logging.getLogger(__name__)

ADDED_TIME_IDS = (7.0, 127.0, 0.0)   # fps-1, motion bucket, noise augmentation: as in the release
TIMESTEP = 1.0
LATENT_MULTIPLE = 64                 # model sides are multiples of this (clean latent grid)
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin")

HOW_TO_GET_WEIGHTS = (
    "Get the VideoMaMa checkpoint folder (its unet/ has 12 input channels) from the VideoMaMa release and "
    "the SVD base (its vae/) from stabilityai/stable-video-diffusion-img2vid-xt on the Hugging Face Hub; "
    "pass them as --checkpoint and --base-model. For a CPU smoke run: python -m models.tiny --out DIR."
)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CheckpointError(RuntimeError):
    """The model folders are missing or hold the wrong model."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """A model folder does not exist."""


StageHook = Callable[[str], ContextManager]


def _no_stage(name: str) -> ContextManager:
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------- policy


def model_size(height: int, width: int, long_side: int = 1024) -> tuple[int, int]:
    """(h, w) the model runs at: aspect kept, long side ~``long_side``, both multiples of 64."""
    scale = long_side / max(height, width)

    def snap(v: float) -> int:
        return max(LATENT_MULTIPLE, int(v / LATENT_MULTIPLE + 0.5) * LATENT_MULTIPLE)  # nearest, ties up

    return snap(height * scale), snap(width * scale)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def sample_seed(seed: int, key: str) -> int:
    """Per-sample generator seed from the config seed and a stable per-sample key."""
    digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def content_key(masks: np.ndarray) -> str:
    """A stable key for a segment given without one: hash of its masks (cheap: packed bits)."""
    h = hashlib.blake2b(np.packbits(np.ascontiguousarray(masks, dtype=bool)).tobytes(), digest_size=16)
    h.update(repr(masks.shape).encode())
    return "masks:" + h.hexdigest()


# ------------------------------------------------------------------------------------ checkpoints


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


def weights_sha256(folders: Sequence[Path]) -> str:
    """sha256 over the config and weight files of the folders (names and contents, sorted)."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES):
            h.update(f"{folder.name}/{path.name}\0".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(8 << 20), b""):
                    h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- matter


class VideoMaMaMatter(MatterBase):
    """The VideoMaMa matter. ``build_matter("videomama", cfg)`` once, then ``refine_batch`` per batch."""

    name = "videomama"
    deterministic = True

    def __init__(self, cfg: MatterConfig):
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

        unet_dir, vae_dir = resolve_folders(cfg)
        unet_cfg = UNetSpatioTemporalConditionModel.load_config(unet_dir)
        check_unet_channels(int(unet_cfg["in_channels"]), str(unet_dir))
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(unet_dir, torch_dtype=dtype)
        vae_cfg = AutoencoderKLTemporalDecoder.load_config(vae_dir)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(vae_dir, torch_dtype=self._vae_dtype(dtype, vae_cfg))
        log.info("loaded VideoMaMa UNet %s and VAE %s (%s, %s)", unet_dir, vae_dir, dtype, device)
        self._setup(unet, vae, cfg, device, dtype, (unet_dir, vae_dir))

    @classmethod
    def from_modules(cls, unet, vae, cfg: MatterConfig) -> "VideoMaMaMatter":
        """Wrap already-built modules (the GPU benchmark's random real-size model) in the production path."""
        check_unet_channels(int(unet.config.in_channels), "given UNet")
        obj = cls.__new__(cls)
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        vae_dtype = cls._vae_dtype(dtype, vae.config)
        if unet.dtype != dtype:
            unet = unet.to(dtype)
        if vae.dtype != vae_dtype:
            vae = vae.to(vae_dtype)
        obj._setup(unet, vae, cfg, device, dtype, None)
        return obj

    @staticmethod
    def _vae_dtype(dtype: torch.dtype, vae_config) -> torch.dtype:
        # The SVD VAE overflows in fp16 (config force_upcast): keep it in fp32 then, as diffusers' SVD pipeline.
        force = vae_config["force_upcast"] if isinstance(vae_config, dict) else vae_config.force_upcast
        return torch.float32 if dtype == torch.float16 and force else dtype

    def _setup(self, unet, vae, cfg: MatterConfig, device, dtype, folders) -> None:
        self.cfg = cfg
        self.device, self.dtype = device, dtype
        self.folders = folders
        self._sha256: str | None = None
        self.stage: StageHook = _no_stage   # benchmarks swap in a timer; production leaves it a no-op
        self.unet = unet.to(device).eval()
        self.vae = vae.to(device).eval()
        self.vae_dtype = next(self.vae.parameters()).dtype
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = int(self.vae.config.latent_channels)
        cross = self.unet.config.cross_attention_dim
        self.cross_dim = int(cross if isinstance(cross, int) else cross[0])
        self.unet_in_channels = int(self.unet.config.in_channels)
        cuda = device.type == "cuda"
        if cfg.cudnn_benchmark and cuda:
            torch.backends.cudnn.benchmark = True   # process-wide: the actor owns its GPU
        if cfg.fused_group_norm:
            fuse_group_norms(self.vae)
        if cfg.channels_last:
            to_channels_last(self.vae)
        self.pin = bool(cfg.pin_memory and cuda)
        self.buckets = parse_buckets(cfg.shape_buckets, cfg.long_side)
        self.compiler = None
        if cfg.compile:
            self.unet, self.compiler = compile_parts(
                self.unet, self.vae, parts=cfg.compile_parts, mode=cfg.compile_mode, backend=cfg.compile_backend,
                n_shapes=2 * len(self.buckets), cache=cfg.compile_cache, device=device)
        self._time_ids = torch.tensor(ADDED_TIME_IDS, device=device, dtype=dtype)
        self._timestep = torch.tensor([TIMESTEP], device=device, dtype=torch.float32)

    # ------------------------------------------------------------------------------- public API

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return self.refine_batch([(frames, masks)])[0]

    def refine_batch(self, clips: Sequence[tuple[np.ndarray, np.ndarray]],
                     keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """float32[T,H,W] mattes in [0,1]; ``keys`` (e.g. sample keys) seed each segment's noise."""
        return [a.numpy() for a in self._run(clips, keys, as_uint8=False)]

    def refine_batch_uint8(self, clips: Sequence[tuple[np.ndarray, np.ndarray]],
                           keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """uint8[T,H,W] mattes (0..255), cast on the model's device before the download."""
        return [a.numpy() for a in self._run(clips, keys, as_uint8=True)]

    def params(self) -> dict:
        c = self.cfg
        return {
            "checkpoint": str(self.folders[0].parent) if self.folders else None,
            "base_model": str(self.folders[1].parent) if self.folders else None,
            "weights_sha256": self.weights_hash(),
            "unet_in_channels": self.unet_in_channels,
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "vae_dtype": str(self.vae_dtype).removeprefix("torch."),
            "resolution": {"long_side": c.long_side, "multiple": LATENT_MULTIPLE, "keep_aspect": True},
            "seed": c.seed, "posterior": c.posterior, "segment_len": c.segment_len,
            "batch_size": c.batch_size, "decode_chunk": c.decode_chunk, "encode_chunk": c.encode_chunk,
            "compile": c.compile, "compile_mode": c.compile_mode if c.compile else None,
            "cudnn_benchmark": c.cudnn_benchmark, "channels_last": c.channels_last, "pin_memory": c.pin_memory,
            "fused_group_norm": c.fused_group_norm, "shape_buckets": format_buckets(self.buckets),
            "pad_batch": c.pad_batch, "compile_backend": c.compile_backend if c.compile else None,
            "compile_cache": c.compile_cache or None,
        }

    def resolved_options(self) -> dict:
        opts = super().resolved_options()
        opts["dtype"] = str(self.dtype).removeprefix("torch.")
        opts["vae_dtype"] = str(self.vae_dtype).removeprefix("torch.")
        opts["shape_buckets"] = format_buckets(self.buckets)
        return opts

    def stats(self) -> dict:
        """Runtime counters: compiles, recompiles, compile seconds and compile-cache hits (when compiled)."""
        return {"compile": self.compiler.summary() if self.compiler is not None else None}

    def weights_hash(self) -> str:
        """sha256 of the loaded folders' files, computed once (``random-init`` for in-memory modules)."""
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.folders) if self.folders else "random-init"
        return self._sha256

    # ------------------------------------------------------------------------------- internals

    @torch.inference_mode()
    def _run(self, clips, keys, as_uint8: bool) -> list[torch.Tensor]:
        if keys is not None and len(keys) != len(clips):
            raise ValueError(f"{len(keys)} keys for {len(clips)} clips")
        groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, (frames, masks) in enumerate(clips):
            self.check_inputs(frames, masks)
            t, hh, ww = masks.shape
            size = bucket_size(hh, ww, self.buckets) if self.buckets else model_size(hh, ww, self.cfg.long_side)
            groups[(*size, max(t, self.cfg.segment_len))].append(i)
        out: list[torch.Tensor | None] = [None] * len(clips)
        bs = max(1, self.cfg.batch_size)
        for (h, w, tp), idx in groups.items():
            for s in range(0, len(idx), bs):
                part = idx[s:s + bs]
                run = pad_indices(part, bs) if self.cfg.pad_batch else part   # padded copies: dropped
                seeds = [sample_seed(self.cfg.seed, keys[i] if keys is not None else content_key(clips[i][1]))
                         for i in run]
                alphas = self._forward([clips[i] for i in run], seeds, h, w, tp, as_uint8)
                for i, a in zip(part, alphas):
                    out[i] = a
        return out  # type: ignore[return-value]

    def _upload(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _prepare(self, frames: np.ndarray, masks: np.ndarray, h: int, w: int, tp: int):
        """uint8/bool host arrays -> model-size tensors in [-1,1], [tp,3,h,w] each, padded in time."""
        f = self._upload(frames).permute(0, 3, 1, 2).float()             # [T,3,H,W] 0..255
        masks = masks if masks.dtype == bool else masks.astype(bool)
        m = self._upload(masks.view(np.uint8))[:, None].float()           # [T,1,H,W] 0..1
        if f.shape[-2:] != (h, w):
            down = f.shape[-2] > h or f.shape[-1] > w
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
        f = f / 127.5 - 1.0
        m = (m * 2.0 - 1.0).expand(-1, 3, -1, -1)
        if f.shape[0] < tp:  # pad by repeating the last frame; cropped back after decoding
            pad = tp - f.shape[0]
            f = torch.cat([f, f[-1:].expand(pad, -1, -1, -1)])
            m = torch.cat([m, m[-1:].expand(pad, -1, -1, -1)])
        return f, m

    def _noise(self, seed: int, tp: int, lh: int, lw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noise, frame posterior eps, mask posterior eps), each [tp,C,lh,lw], from one CPU generator."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        shape = (tp, self.latent_channels, lh, lw)
        draws = [torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(3)]
        return tuple(self._upload_tensor(d) for d in draws)  # type: ignore[return-value]

    def _upload_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _forward(self, clips, seeds: list[int], h: int, w: int, tp: int, as_uint8: bool) -> list[torch.Tensor]:
        b = len(clips)
        lh, lw = h // self.vae_factor, w // self.vae_factor
        with self.stage("preprocess"):
            prepared = [self._prepare(f, m, h, w, tp) for f, m in clips]
            frames = torch.stack([p[0] for p in prepared]).flatten(0, 1)   # [B*tp,3,h,w]
            masks = torch.stack([p[1] for p in prepared]).flatten(0, 1)
            x = torch.cat([frames, masks]).to(self.vae_dtype)              # frames first, then masks
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            draws = [self._noise(s, tp, lh, lw) for s in seeds]
            noise = torch.stack([d[0] for d in draws])                     # [B,tp,C,lh,lw]
            eps = torch.cat([torch.stack([d[1] for d in draws]).flatten(0, 1),
                             torch.stack([d[2] for d in draws]).flatten(0, 1)]).to(self.vae_dtype)
        with self.stage("encode"):
            chunk = self.cfg.encode_chunk if self.cfg.encode_chunk > 0 else x.shape[0]
            lat = []
            for s in range(0, x.shape[0], chunk):
                dist = self.vae.encode(x[s:s + chunk]).latent_dist
                if self.cfg.posterior == "mode":
                    lat.append(dist.mode())
                elif self.cfg.posterior == "sample":   # = latent_dist.sample() with our seeded eps
                    lat.append(dist.mean + dist.std * eps[s:s + chunk])
                else:
                    raise ValueError(f"posterior must be sample or mode, got {self.cfg.posterior!r}")
            lat = torch.cat(lat).to(self.dtype)                             # unscaled condition latents
            frame_lat, mask_lat = lat[: b * tp], lat[b * tp:]
        with self.stage("unet"):
            sample = torch.cat([
                noise.to(self.dtype),
                frame_lat.reshape(b, tp, *frame_lat.shape[1:]),
                mask_lat.reshape(b, tp, *mask_lat.shape[1:]),
            ], dim=2)                                                       # [B,tp,12,lh,lw]
            states = torch.zeros(b, 1, self.cross_dim, device=self.device, dtype=self.dtype)
            time_ids = self._time_ids.expand(b, -1)
            pred = self.unet(sample, self._timestep, encoder_hidden_states=states,
                             added_time_ids=time_ids, return_dict=False)[0]
            z = (pred / self.scaling_factor).to(self.vae_dtype)              # [B,tp,C,lh,lw]
        with self.stage("decode"):
            chunk = self.cfg.decode_chunk if self.cfg.decode_chunk > 0 else tp
            rgb = []
            for s in range(0, tp, chunk):
                zc = z[:, s:s + chunk]
                n = zc.shape[1]
                zc = zc.flatten(0, 1)
                if self.cfg.channels_last:
                    zc = zc.contiguous(memory_format=torch.channels_last)
                img = self.vae.decode(zc, num_frames=n, return_dict=False)[0]   # [B*n,3,h,w]
                a = (img.float() / 2 + 0.5).clamp(0, 1).mean(dim=1)
                rgb.append(a.reshape(b, n, h, w))
            alpha = torch.cat(rgb, dim=1)                                   # [B,tp,h,w] float32
        with self.stage("postprocess"):
            out = []
            for (frames, _), a in zip(clips, alpha):
                t, hh, ww = frames.shape[:3]
                a = a[:t]
                if (hh, ww) != (h, w):
                    down = hh < h or ww < w
                    a = F.interpolate(a[:, None], size=(hh, ww), mode="bilinear", align_corners=False,
                                      antialias=down)[:, 0].clamp(0, 1)
                if as_uint8:
                    a = (a * 255.0).round().to(torch.uint8)
                out.append(a.cpu() if as_uint8 else a.float().cpu())
        return out
