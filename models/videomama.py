"""VideoMaMa: one-step, mask-conditioned Stable Video Diffusion matter (diffusers).

Per batch of segments (DESIGN.md "The matter contract"): frames and masks (3 channels) in [-1, 1] are
VAE-encoded per frame (posterior sampled with a seeded generator, or its mode), the condition latents
are used unscaled; the UNet sees concat(noise, frame latent, mask latent) on channels, zero encoder
states [B,1,cross_dim], added_time_ids [7,127,0] and timestep 1. Its output is the clean scaled latent:
divide by the VAE scaling factor, decode in chunks of ``decode_chunk`` frames with num_frames = the
chunk (default 8, the release's grouping: 8 then 4 for 12 frames; the temporal decoder mixes frames only
inside a chunk), map (x/2+0.5).clamp(0,1) and average RGB. By default the model runs at an
aspect-keeping size (long side ``long_side``, both sides multiples of 64) and the matte is resized back
to the source size on the model's device.

Release parity (README "Release parity"): every deliberate difference from the official inference is a
MatterConfig option (``resize``, ``resample``, ``mask_threshold``, ``dtype``/``vae_dtype``, ``alpha_8bit``,
``decode_chunk``); ``models.presets`` names the release CLI's values. Checkpoint folders load as published:
plain and/or ``fp16``-variant weight files, the variant matching the dtype preferred.

Noise is a pure function of (config seed, sample): each segment gets its own CPU generator seeded from
the config seed and the sample's key (or, when no key is given, a hash of its masks), so reruns,
batch composition and batch order never change a matte.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mava import schema
from models.base import MatterBase, MatterConfig
from models.checkpoint import (
    WeightFiles, check_unet_channels, require_config, resolve_folders, select_weights, weights_sha256,
)
from models.compile_cache import bucket_size, compile_parts, format_buckets, pad_indices, parse_buckets
from models.groupnorm import fuse_group_norms
from models.presets import differences
from models.vae_layout import to_channels_last

log = logging.getLogger(__name__)

ADDED_TIME_IDS = (7.0, 127.0, 0.0)   # fps id, motion bucket, noise aug.: the release passes fps=7 as is
TIMESTEP = 1.0
LATENT_MULTIPLE = 64                 # model sides are multiples of this (clean latent grid)
STRETCH_HW = (576, 1024)             # the release CLI's (and demo's) model size, H x W, at long side 1024
RESIZES = ("keep-aspect", "stretch")
RESAMPLES = ("torch", "pil")
ALPHA_8BIT = ("round", "truncate")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StagedBatch:
    """A batch whose inputs are already on the device (see ``VideoMaMaMatter.prepare_batch``)."""

    size: int
    batches: list
    event: object = None


StageHook = Callable[[str], ContextManager]


def _no_stage(name: str) -> ContextManager:
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------- policy


def _snap(v: float) -> int:
    return max(LATENT_MULTIPLE, int(v / LATENT_MULTIPLE + 0.5) * LATENT_MULTIPLE)  # nearest, ties up


def model_size(height: int, width: int, long_side: int = 1024, resize: str = "keep-aspect") -> tuple[int, int]:
    """(h, w) the model runs at, both multiples of 64.

    ``keep-aspect``: aspect kept, long side ~``long_side``. ``stretch``: every clip, portrait or not, to the
    release's 16:9 landscape frame scaled to ``long_side`` wide (1024x576 at 1024), aspect not kept.
    """
    if resize == "stretch":
        return _snap(long_side * STRETCH_HW[0] / STRETCH_HW[1]), _snap(long_side)
    if resize != "keep-aspect":
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    scale = long_side / max(height, width)
    return _snap(height * scale), _snap(width * scale)


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


def resolve_vae_dtype(name: str, dtype: torch.dtype, vae_config) -> torch.dtype:
    """The VAE's dtype: ``auto`` follows ``dtype`` but keeps fp32 when ``dtype`` is fp16 and the VAE config
    says ``force_upcast`` (the SVD VAE can overflow in fp16; diffusers' SVD pipeline upcasts too). The
    release runs it in fp16 regardless: ``vae_dtype="fp16"``."""
    if name == "auto":
        force = vae_config["force_upcast"] if isinstance(vae_config, dict) else vae_config.force_upcast
        return torch.float32 if dtype == torch.float16 and force else dtype
    if name not in _DTYPES:
        raise ValueError(f"vae_dtype must be auto or one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_options(cfg: MatterConfig) -> None:
    """Refuse unknown values of the parity options before any weights are read."""
    for name, allowed in (("resize", RESIZES), ("resample", RESAMPLES), ("alpha_8bit", ALPHA_8BIT),
                          ("alpha_precision", ("fp32", "vae")), ("posterior", ("sample", "mode"))):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.mask_threshold is not None and not 0 <= cfg.mask_threshold < 255:
        raise ValueError(f"mask_threshold must be None or in 0..254 (0..255 scale, > N is foreground), "
                         f"got {cfg.mask_threshold!r}")
    if cfg.decode_chunk < 0:
        raise ValueError(f"decode_chunk must be >= 0 (0 = the whole segment), got {cfg.decode_chunk}")


def pil_resize(images: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8[T,H,W(,3)] -> uint8[T,h,w(,3)] with PIL's bilinear filter (antialiased when shrinking), the
    release's resize; returned unchanged when the size already matches."""
    from PIL import Image

    if images.shape[1:3] == (h, w):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR)) for im in images])


def sample_seed(seed: int, key: str) -> int:
    """Per-sample generator seed from the config seed and a stable per-sample key."""
    digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def content_key(masks: np.ndarray) -> str:
    """A stable key for a segment given without one: hash of its masks (cheap: packed bits)."""
    h = hashlib.blake2b(np.packbits(np.ascontiguousarray(masks, dtype=bool)).tobytes(), digest_size=16)
    h.update(repr(masks.shape).encode())
    return "masks:" + h.hexdigest()


# ----------------------------------------------------------------------------------------- matter


class VideoMaMaMatter(MatterBase):
    """The VideoMaMa matter. ``build_matter("videomama", cfg)`` once, then ``refine_batch`` per batch."""

    name = "videomama"
    deterministic = True

    def __init__(self, cfg: MatterConfig):
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

        check_options(cfg)
        unet_dir, vae_dir = resolve_folders(cfg)
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        unet_files = select_weights(unet_dir, dtype, "VideoMaMa UNet")
        unet_cfg = UNetSpatioTemporalConditionModel.load_config(unet_dir)
        check_unet_channels(int(unet_cfg["in_channels"]), str(unet_dir))
        require_config(vae_dir, "SVD VAE")
        vae_dtype = resolve_vae_dtype(cfg.vae_dtype, dtype, AutoencoderKLTemporalDecoder.load_config(vae_dir))
        vae_files = select_weights(vae_dir, vae_dtype, "SVD VAE")
        unet = UNetSpatioTemporalConditionModel.from_pretrained(
            unet_dir, torch_dtype=dtype, variant=unet_files.diffusers_variant, use_safetensors=unet_files.safetensors)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            vae_dir, torch_dtype=vae_dtype, variant=vae_files.diffusers_variant, use_safetensors=vae_files.safetensors)
        log.info("loaded VideoMaMa UNet %s (%s files) and VAE %s (%s files) on %s, UNet %s, VAE %s", unet_dir,
                 unet_files.variant, vae_dir, vae_files.variant, device, dtype_name(dtype), dtype_name(vae_dtype))
        self._setup(unet, vae, cfg, device, dtype, (unet_files, vae_files))

    @classmethod
    def from_modules(cls, unet, vae, cfg: MatterConfig) -> "VideoMaMaMatter":
        """Wrap already-built modules (the GPU benchmark's random real-size model) in the production path."""
        check_options(cfg)
        check_unet_channels(int(unet.config.in_channels), "given UNet")
        obj = cls.__new__(cls)
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        vae_dtype = resolve_vae_dtype(cfg.vae_dtype, dtype, vae.config)
        if unet.dtype != dtype:
            unet = unet.to(dtype)
        if vae.dtype != vae_dtype:
            vae = vae.to(vae_dtype)
        obj._setup(unet, vae, cfg, device, dtype, None)
        return obj

    def _setup(self, unet, vae, cfg: MatterConfig, device, dtype, weights) -> None:
        self.cfg = cfg
        self.device, self.dtype = device, dtype
        self.weights: tuple[WeightFiles, WeightFiles] | None = weights   # (unet, vae) files loaded
        self.folders = (weights[0].folder, weights[1].folder) if weights else None
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
            schema.FP_WEIGHTS: self.weights_hash(),
            "weights": {"unet": self.weights[0].describe(), "vae": self.weights[1].describe()} if self.weights else None,
            "unet_in_channels": self.unet_in_channels,
            "device": str(self.device), "dtype": dtype_name(self.dtype), "vae_dtype": dtype_name(self.vae_dtype),
            "resolution": {"long_side": c.long_side, "multiple": LATENT_MULTIPLE, "resize": c.resize,
                           "keep_aspect": c.resize == "keep-aspect", "resample": c.resample},
            "mask_threshold": c.mask_threshold, "alpha_8bit": c.alpha_8bit, "alpha_precision": c.alpha_precision,
            "seed": c.seed, "posterior": c.posterior, "segment_len": c.segment_len,
            "batch_size": c.batch_size, "decode_chunk": c.decode_chunk, "encode_chunk": c.encode_chunk,
            "compile": c.compile, "compile_mode": c.compile_mode if c.compile else None,
            "cudnn_benchmark": c.cudnn_benchmark, "channels_last": c.channels_last, "pin_memory": c.pin_memory,
            "fused_group_norm": c.fused_group_norm, "shape_buckets": format_buckets(self.buckets),
            "pad_batch": c.pad_batch, "compile_backend": c.compile_backend if c.compile else None,
            "compile_cache": c.compile_cache or None,
            "differs_from_release": self.release_differences(),
        }

    def release_differences(self) -> dict:
        """Resolved options that differ from the release CLI's (``models.presets`` 'release'): {name: [ours, release]}."""
        resolved = self.resolved_options()
        out = {}
        for name, (_, release) in differences(self.cfg, "release").items():
            ours = resolved.get(name, getattr(self.cfg, name))
            if name in ("dtype", "vae_dtype"):
                release = dtype_name(_DTYPES[release])
            if ours != release:
                out[name] = [ours, release]
        return out

    def resolved_options(self) -> dict:
        """Output options as they act: ``dtype``/``vae_dtype`` are the dtypes the UNet and VAE run in."""
        opts = super().resolved_options()
        opts["dtype"] = dtype_name(self.dtype)
        opts["vae_dtype"] = dtype_name(self.vae_dtype)
        opts["shape_buckets"] = format_buckets(self.buckets)
        return opts

    def stats(self) -> dict:
        """Runtime counters: compiles, recompiles, compile seconds and compile-cache hits (when compiled)."""
        return {"compile": self.compiler.summary() if self.compiler is not None else None}

    def weights_hash(self) -> str:
        """sha256 of the files actually loaded, computed once (``random-init`` for in-memory modules)."""
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.weights) if self.weights else "random-init"
        return self._sha256

    # ------------------------------------------------------------------------------- internals

    def _plan(self, clips, keys) -> list[tuple[list[int], list[int], int, int, int, list[int]]]:
        """Model batches of ``clips``: (clip indices, indices run incl. padding, h, w, tp, seeds) each."""
        if keys is not None and len(keys) != len(clips):
            raise ValueError(f"{len(keys)} keys for {len(clips)} clips")
        groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, (frames, masks) in enumerate(clips):
            self.check_inputs(frames, masks)
            t, hh, ww = masks.shape
            size = (bucket_size(hh, ww, self.buckets) if self.buckets
                    else model_size(hh, ww, self.cfg.long_side, self.cfg.resize))
            groups[(*size, max(t, self.cfg.segment_len))].append(i)
        bs = max(1, self.cfg.batch_size)
        batches = []
        for (h, w, tp), idx in groups.items():
            for s in range(0, len(idx), bs):
                part = idx[s:s + bs]
                run = pad_indices(part, bs) if self.cfg.pad_batch else part   # padded copies: dropped
                seeds = [sample_seed(self.cfg.seed, keys[i] if keys is not None else content_key(clips[i][1]))
                         for i in run]
                batches.append((part, run, h, w, tp, seeds))
        return batches

    @torch.inference_mode()
    def _run(self, clips, keys, as_uint8: bool) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(clips)
        for part, run, h, w, tp, seeds in self._plan(clips, keys):
            batch = [clips[i] for i in run]
            alphas = self._model(batch, self._preprocess(batch, seeds, h, w, tp), h, w, tp, as_uint8)
            for i, a in zip(part, alphas):
                out[i] = a
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def prepare_batch(self, clips: Sequence[tuple[np.ndarray, np.ndarray]],
                      keys: Sequence[str] | None = None) -> "StagedBatch":
        """The part of a batch that needs no model: host resizing (``resample="pil"``), uploads, noise.

        The matter actor calls it for batch n+1 while batch n runs on the GPU; on CUDA it runs on a
        side stream, and :meth:`refine_prepared` makes the model's stream wait for it.
        """
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            staged = [(part, [clips[i] for i in run], self._preprocess([clips[i] for i in run], seeds, h, w, tp),
                       h, w, tp) for part, run, h, w, tp, seeds in self._plan(clips, keys)]
        event = None
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
        return StagedBatch(len(clips), staged, event)

    @torch.inference_mode()
    def refine_prepared(self, staged: "StagedBatch") -> list[np.ndarray]:
        """uint8[T,H,W] mattes of a batch staged by :meth:`prepare_batch` (same as refine_batch_uint8)."""
        if staged.event is not None:
            torch.cuda.current_stream(self.device).wait_event(staged.event)
        out: list[np.ndarray | None] = [None] * staged.size
        for part, batch, pre, h, w, tp in staged.batches:
            for i, a in zip(part, self._model(batch, pre, h, w, tp, as_uint8=True)):
                out[i] = a.numpy()
        return out  # type: ignore[return-value]

    def _upload(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _prepare(self, frames: np.ndarray, masks: np.ndarray, h: int, w: int, tp: int):
        """uint8/bool host arrays -> model-size tensors in [-1,1], [tp,3,h,w] each, padded in time.

        Values map as the release's ``ToTensor()*2-1``: x/255*2-1. ``resample="pil"`` resizes uint8 on the
        host with PIL (the release), ``torch`` resizes floats on the device. ``mask_threshold`` then
        binarises the resized mask on the 0..255 scale (``> N``), as the release CLI does at 127.
        """
        masks = masks if masks.dtype == bool else masks.astype(bool)
        thr = self.cfg.mask_threshold
        if self.cfg.resample == "pil":
            mk = pil_resize(masks.view(np.uint8) * np.uint8(255), h, w)     # [T,h,w] uint8 0..255
            if thr is not None:
                mk = np.where(mk > thr, np.uint8(255), np.uint8(0))
            f = self._upload(pil_resize(frames, h, w)).permute(0, 3, 1, 2).float() / 255.0
            m = self._upload(mk)[:, None].float() / 255.0
        else:
            f = self._upload(frames).permute(0, 3, 1, 2).float()             # [T,3,H,W] 0..255
            m = self._upload(masks.view(np.uint8))[:, None].float()           # [T,1,H,W] 0..1
            if f.shape[-2:] != (h, w):
                down = f.shape[-2] > h or f.shape[-1] > w
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
            f = f / 255.0
            if thr is not None:
                m = ((m * 255.0).round() > thr).float()
        f = f * 2.0 - 1.0
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

    def _preprocess(self, clips, seeds: list[int], h: int, w: int, tp: int) -> dict[str, torch.Tensor]:
        """Model inputs of one batch on the device: VAE input x (frames then masks), noise, posterior eps."""
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
        return {"x": x, "noise": noise, "eps": eps}

    def _model(self, clips, pre: dict[str, torch.Tensor], h: int, w: int, tp: int,
               as_uint8: bool) -> list[torch.Tensor]:
        """Encode, UNet, decode and postprocess of a preprocessed batch."""
        b = len(clips)
        x, noise, eps = pre["x"], pre["noise"], pre["eps"]
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
            # unscaled condition latents; the release scales the sample by the VAE factor and back (x*sf/sf):
            # kept, since in fp16/bf16 that round trip moves latents by an ulp (measured: 7% of 8-bit
            # alphas off by one step in fp16 without it)
            lat = (torch.cat(lat) * self.scaling_factor / self.scaling_factor).to(self.dtype)
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
            z = (pred * (1.0 / self.scaling_factor)).to(self.vae_dtype)      # [B,tp,C,lh,lw], as the release
        with self.stage("decode"):
            # the release's temporal grouping: num_frames = the chunk (8, then the rest), per segment
            chunk = self.cfg.decode_chunk if self.cfg.decode_chunk > 0 else tp
            rgb = []
            for s in range(0, tp, chunk):
                zc = z[:, s:s + chunk]
                n = zc.shape[1]
                zc = zc.flatten(0, 1)
                if self.cfg.channels_last:
                    zc = zc.contiguous(memory_format=torch.channels_last)
                img = self.vae.decode(zc, num_frames=n, return_dict=False)[0]   # [B*n,3,h,w]
                if self.cfg.alpha_precision == "fp32":
                    img = img.float()
                a = (img / 2 + 0.5).clamp(0, 1).mean(dim=1)   # "vae": in the VAE's dtype, as the release
                rgb.append(a.reshape(b, n, h, w))
            alpha = torch.cat(rgb, dim=1)                                   # [B,tp,h,w]
        with self.stage("postprocess"):
            out = []
            for (frames, _), a in zip(clips, alpha):
                t, hh, ww = frames.shape[:3]
                a = a[:t]
                if self.cfg.resample == "pil":
                    # the release demo: 8-bit at model size, then PIL bilinear to the source size
                    u = pil_resize(self._to_uint8(a).cpu().numpy(), hh, ww)
                    out.append(torch.from_numpy(u) if as_uint8 else torch.from_numpy(u).float() / 255.0)
                    continue
                if (hh, ww) != (h, w):
                    down = hh < h or ww < w
                    a = F.interpolate(a[:, None].float(), size=(hh, ww), mode="bilinear", align_corners=False,
                                      antialias=down)[:, 0].clamp(0, 1)
                out.append(self._to_uint8(a).cpu() if as_uint8 else a.float().cpu())
        return out

    def _to_uint8(self, a: torch.Tensor) -> torch.Tensor:
        """alpha in [0,1] -> uint8 by ``alpha_8bit``: round (ours) or truncate (the release's ToPILImage),
        the x255 in ``a``'s dtype (fp16 under ``alpha_precision="vae"`` with an fp16 VAE, as the release)."""
        a = a * 255.0
        return (a.round() if self.cfg.alpha_8bit == "round" else a).to(torch.uint8)   # .to truncates
