"""torch.compile that pays off in production: fixed model shapes, counted compiles, shared artefacts.

Every new input shape recompiles a ``torch.compile``d module (minutes on the real model, per actor,
per restart). Three measures keep that to once per shape, once per fleet:

* **shape buckets** (:func:`parse_buckets`, :func:`bucket_size`): each clip runs at the bucket
  (``WxH``, multiples of 64) nearest its aspect ratio, so a job over many aspect ratios sees a small
  fixed set of model shapes (an output option: the stretch changes the mattes);
* **fixed batches** (:func:`pad_indices`): a smaller last batch is padded with repeated segments
  whose outputs are dropped (a runtime option: batching moves only float rounding);
* **artefact reuse** (:class:`CompileCache`): a local folder holds inductor's on-disk caches
  (``TORCHINDUCTOR_CACHE_DIR``: FX graph + AOTAutograd caches, Triton kernels) for restarts on one
  node; any folder or fsspec URL holds ``torch.compiler.save_cache_artifacts`` blobs, loaded
  (``load_cache_artifacts``) before the first compile, so other actors and nodes start warm.

:class:`CompileTracker` wraps each compiled part and counts its compiles (dynamo graphs), distinct
input shapes, recompiles and inductor/AOTAutograd cache hits and misses, for ``VideoMaMaMatter.stats()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

LATENT_MULTIPLE = 64
COMPILE_PARTS = ("unet", "encoder", "decoder")
#: aspect ratios (width/height) of ``shape_buckets="auto"``: 16:9, 9:16, 4:3, 3:4, 1:1
AUTO_ASPECTS = (16 / 9, 9 / 16, 4 / 3, 3 / 4, 1.0)


# ------------------------------------------------------------------------------------------ buckets


def _snap(v: float) -> int:
    return max(LATENT_MULTIPLE, int(v / LATENT_MULTIPLE + 0.5) * LATENT_MULTIPLE)


def auto_buckets(long_side: int) -> list[tuple[int, int]]:
    """(h, w) buckets for ``AUTO_ASPECTS`` at ``long_side`` (sides snapped to multiples of 64)."""
    out = []
    for a in AUTO_ASPECTS:
        hw = (_snap(long_side / a), long_side) if a >= 1 else (long_side, _snap(long_side * a))
        if hw not in out:
            out.append(hw)
    return out


def parse_buckets(spec: str, long_side: int = 1024) -> list[tuple[int, int]]:
    """``"1024x576,576x1024"`` (width x height) -> [(h, w), ...]; ``"auto"`` -> :func:`auto_buckets`;
    ``""`` -> [] (no buckets). Sides must be positive multiples of 64."""
    spec = (spec or "").strip()
    if not spec:
        return []
    if spec == "auto":
        return auto_buckets(long_side)
    out = []
    for item in spec.split(","):
        try:
            w, h = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"shape bucket {item!r}: expected WxH, e.g. 1024x576") from None
        if h <= 0 or w <= 0 or h % LATENT_MULTIPLE or w % LATENT_MULTIPLE:
            raise ValueError(f"shape bucket {item!r}: both sides must be positive multiples of {LATENT_MULTIPLE}")
        if (h, w) not in out:
            out.append((h, w))
    return out


def format_buckets(buckets: Sequence[tuple[int, int]]) -> str:
    """[(h, w)] -> ``"WxH,..."`` (the resolved option recorded in the fingerprint)."""
    return ",".join(f"{w}x{h}" for h, w in buckets)


def bucket_size(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (h, w) bucket whose aspect ratio is nearest the clip's (log distance); ties: the larger area,
    then the first listed."""
    if not buckets:
        raise ValueError("no shape buckets")
    a = math.log(width / height)
    return min(buckets, key=lambda hw: (round(abs(math.log(hw[1] / hw[0]) - a), 9), -hw[0] * hw[1]))


def pad_indices(part: Sequence[int], size: int) -> list[int]:
    """``part`` cycled to ``size`` entries (a smaller last batch padded with repeated segments)."""
    if not part:
        return []
    return [part[i % len(part)] for i in range(max(size, len(part)))]


# ------------------------------------------------------------------------------------------- counts

_COUNTER_KEYS = {
    "graphs": ("stats", "unique_graphs"),
    "fxgraph_cache_hit": ("inductor", "fxgraph_cache_hit"),
    "fxgraph_cache_miss": ("inductor", "fxgraph_cache_miss"),
    "fxgraph_cache_bypass": ("inductor", "fxgraph_cache_bypass"),
    "aot_cache_hit": ("aot_autograd", "autograd_cache_hit"),
    "aot_cache_miss": ("aot_autograd", "autograd_cache_miss"),
}


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {k: int(counters[a][b]) for k, (a, b) in _COUNTER_KEYS.items()}


def _shape_of(args, kwargs) -> tuple:
    """Shapes and dtypes of the tensor arguments (what a static compile specialises on)."""
    out = []
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor):
            out.append((tuple(v.shape), str(v.dtype).removeprefix("torch.")))
    return tuple(out)


class CompileTracker:
    """Per compiled part: compile events (calls that compiled >= 1 graph), graphs, distinct input
    shapes, recompiles (compile events after the first) and seconds spent in compiling calls; plus
    inductor FX-graph and AOTAutograd cache hits/misses. Counts are deltas of torch's process-wide
    counters around this matter's calls, so two matters in one process do not mix."""

    def __init__(self, cache: "CompileCache | None" = None):
        self.cache = cache
        self.parts: dict[str, dict[str, Any]] = {}
        self.totals = {k: 0 for k in _COUNTER_KEYS}
        self.compile_s = 0.0

    def _part(self, name: str) -> dict[str, Any]:
        return self.parts.setdefault(name, {"calls": 0, "compiles": 0, "graphs": 0, "recompiles": 0,
                                            "compile_s": 0.0, "shapes": set()})

    @contextlib.contextmanager
    def track(self, name: str, shape: tuple):
        p = self._part(name)
        before = _counters()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            delta = {k: v - before[k] for k, v in _counters().items()}
            for k, v in delta.items():
                self.totals[k] += v
            p["calls"] += 1
            p["shapes"].add(shape)
            if delta["graphs"] > 0:
                p["recompiles"] += 1 if p["compiles"] else 0
                p["compiles"] += 1
                p["graphs"] += delta["graphs"]
                p["compile_s"] += dt
                self.compile_s += dt
                log.info("compiled %s for %s in %.1f s (%s)", name, shape, dt, delta)
                if self.cache is not None and delta["fxgraph_cache_miss"] + delta["aot_cache_miss"] > 0:
                    self.cache.save()

    def summary(self) -> dict[str, Any]:
        """JSON-able counts: totals, per part, and the artefact cache's loads/saves."""
        parts = {n: {**{k: v for k, v in p.items() if k != "shapes"}, "shapes": len(p["shapes"])}
                 for n, p in self.parts.items()}
        out = {"compiles": sum(p["compiles"] for p in parts.values()),
               "recompiles": sum(p["recompiles"] for p in parts.values()),
               "compile_s": round(self.compile_s, 3), **self.totals, "parts": parts}
        if self.cache is not None:
            out["cache"] = self.cache.summary()
        return out


class TrackedPart(nn.Module):
    """A compiled part whose calls are counted by a :class:`CompileTracker`."""

    def __init__(self, module: nn.Module, name: str, tracker: CompileTracker):
        super().__init__()
        self.inner = module
        self.part_name = name
        self._tracker = tracker

    def forward(self, *args, **kwargs):
        with self._tracker.track(self.part_name, _shape_of(args, kwargs)):
            return self.inner(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)   # e.g. unet.config, unet.dtype


# -------------------------------------------------------------------------------------------- cache


def env_key(device: torch.device) -> str:
    """Artefacts only load where they were made: torch, Triton, Python and device identify them."""
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "none"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    ident = f"torch{torch.__version__}|triton{tv}|py{sys.version_info[0]}.{sys.version_info[1]}|{dev}"
    slug = "".join(c if c.isalnum() else "-" for c in f"torch{torch.__version__}-{dev}").strip("-")
    return f"{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def is_url(path: str) -> bool:
    return "://" in path


class CompileCache:
    """Compiled-artefact reuse across actors and restarts.

    ``location``: a local folder (``<folder>/inductor`` becomes ``TORCHINDUCTOR_CACHE_DIR`` for this
    process, ``<folder>/artifacts/<env>/`` holds blobs) or an fsspec URL (blobs only). Blobs are
    ``torch.compiler.save_cache_artifacts()`` output, one per process that compiled something new
    (``<host>-<pid>.bin``, rewritten as it compiles more); all are loaded before the first compile.
    """

    def __init__(self, location: str, device: torch.device):
        self.location = location.rstrip("/")
        self.blob_dir = f"{self.location}/artifacts/{env_key(device)}"
        self.name = f"{socket.gethostname()}-{os.getpid()}.bin"
        self.loaded: list[str] = []
        self.loaded_entries = 0
        self.saves = 0
        self.inductor_dir: str | None = None
        if not is_url(self.location):
            self.inductor_dir = str(Path(self.location, "inductor").resolve())
            Path(self.inductor_dir).mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.inductor_dir   # read lazily by inductor
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True

    def _fs(self):
        import fsspec

        return fsspec.core.url_to_fs(self.blob_dir)

    def load(self) -> int:
        """Load every blob of this environment; returns the number of blobs loaded."""
        fs, path = self._fs()
        if not fs.exists(path):
            return 0
        for blob in sorted(fs.glob(f"{path}/*.bin")):
            data = fs.cat_file(blob)
            info = torch.compiler.load_cache_artifacts(data)
            n = sum(len(v) for v in getattr(info, "artifacts", {}).values()) if info is not None else 0
            self.loaded.append(blob.rsplit("/", 1)[-1])
            self.loaded_entries += n
            log.info("loaded compile artefacts %s (%d entries, %.1f MB)", blob, n, len(data) / 1e6)
        return len(self.loaded)

    def save(self) -> str | None:
        """Write this process's artefacts (all it compiled so far) to its blob; atomic rename."""
        res = torch.compiler.save_cache_artifacts()
        if res is None:
            return None
        data, _ = res
        fs, path = self._fs()
        fs.makedirs(path, exist_ok=True)
        final, tmp = f"{path}/{self.name}", f"{path}/.{self.name}.tmp"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, final)
        self.saves += 1
        log.info("saved compile artefacts to %s (%.1f MB)", final, len(data) / 1e6)
        return final

    def summary(self) -> dict[str, Any]:
        return {"location": self.location, "inductor_dir": self.inductor_dir, "blobs_loaded": len(self.loaded),
                "entries_loaded": self.loaded_entries, "saves": self.saves}


# ------------------------------------------------------------------------------------------ compile


def compile_parts(unet: nn.Module, vae: nn.Module, *, parts: str, mode: str = "default", backend: str = "inductor",
                  n_shapes: int = 0, cache: str = "", device: torch.device | None = None
                  ) -> tuple[nn.Module, CompileTracker]:
    """``torch.compile`` the named parts (``unet``, ``encoder``, ``decoder``), each wrapped in a
    :class:`TrackedPart`; returns (unet, tracker) (the VAE's parts are replaced in place).

    Always ``dynamic=False``: one specialised graph per input shape (what shape buckets bound), never
    dynamo's automatic dynamic shapes (slower kernels, no CUDA graphs, and with channels-last views the
    symbolic trace of the temporal decoder's second chunk size ran for over 30 minutes on torch 2.13).
    The recompile limit is raised to cover ``n_shapes`` shapes per part (at least 16).
    ``cache``: a :class:`CompileCache` location, loaded now.
    """
    names = {p.strip() for p in parts.split(",") if p.strip()}
    unknown = names - set(COMPILE_PARTS)
    if unknown:
        raise ValueError(f"compile_parts: unknown parts {sorted(unknown)} (use {', '.join(COMPILE_PARTS)})")
    store = CompileCache(cache, device or torch.device("cpu")) if cache else None
    if store is not None:
        store.load()
    tracker = CompileTracker(store)
    kw: dict[str, Any] = {"backend": backend}
    if mode != "default":
        if backend != "inductor":
            raise ValueError(f"compile_mode {mode!r} needs the inductor backend, not {backend!r}")
        kw["mode"] = mode
    kw["dynamic"] = False
    limit = max(16, 2 * n_shapes + 4)
    cfg = torch._dynamo.config
    if getattr(cfg, "recompile_limit", 0) < limit:
        cfg.recompile_limit = limit
    if getattr(cfg, "accumulated_recompile_limit", 0) < 4 * limit:
        cfg.accumulated_recompile_limit = 4 * limit
    if "unet" in names:
        unet = TrackedPart(torch.compile(unet, **kw), "unet", tracker)
    if "encoder" in names:
        vae.encoder = TrackedPart(torch.compile(vae.encoder, **kw), "encoder", tracker)
    if "decoder" in names:
        vae.decoder = TrackedPart(torch.compile(vae.decoder, **kw), "decoder", tracker)
    return unet, tracker
