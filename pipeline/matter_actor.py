"""The matter actor: one per GPU (or N on CPU); loads its matter once and mattes segments.

It takes segments (or reader failures, passed through untouched) and returns uint8 mattes, so the
bytes that leave the GPU are already the bytes the writer stores. It keeps its own busy/idle clock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass

import numpy as np

from models.base import MatterConfig, build_matter, to_uint8
from pipeline.segments import SegmentData

log = logging.getLogger(__name__)


@dataclass
class MatterFailure:
    """The matter raised on one segment; becomes a failed manifest row."""

    error_type: str
    message: str

    def __str__(self) -> str:
        return self.message


class MatterActor:
    """Wraps a matter for Ray; use via ``ray.remote(MatterActor).options(...)``."""

    def __init__(self, matter: str, config: MatterConfig):
        t0 = time.perf_counter()
        self.name = matter
        self.config = config
        self.matter = build_matter(matter, config)
        self.load_s = time.perf_counter() - t0
        self.busy_s = 0.0
        self.calls = 0
        self.segments = 0
        self.frames = 0
        self.first_call: float | None = None
        self.last_end: float | None = None
        self.idle_s = 0.0  # gaps between calls after the first: the GPU waiting for input
        self.first_call_s = 0.0  # the first call (compile, cuDNN autotune, lazy init), left out of "warm"

    def info(self) -> dict:
        """Where this actor runs and what it loaded."""
        import ray

        describe = getattr(self.matter, "describe", None)
        return {
            "pid": os.getpid(), "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "matter": describe() if callable(describe) else {"name": self.name},
            "config": asdict(self.config), "load_s": round(self.load_s, 3),
        }

    def refine(self, *items):
        """Matte each SegmentData; pass reader failures through.

        One result per item (uint8 matte, MatterFailure, or the failure passed through); a single item
        gives a bare result, a batch a list, matching Ray's ``num_returns``.
        """
        start = time.perf_counter()
        if self.last_end is not None:
            self.idle_s += start - self.last_end
        self.first_call = self.first_call or start
        todo = [i for i, it in enumerate(items) if isinstance(it, SegmentData)]
        out: list = list(items)
        for i, alpha in zip(todo, self._refine([items[i] for i in todo])):
            out[i] = alpha
        self.last_end = time.perf_counter()
        self.busy_s += self.last_end - start
        if self.calls == 0:
            self.first_call_s = self.last_end - start
        self.calls += 1
        self.segments += len(todo)
        self.frames += sum(items[i].masks.shape[0] for i in todo)
        return out if len(out) > 1 else out[0]

    def _refine(self, datas: list[SegmentData]) -> list:
        if not datas:
            return []
        clips = [(d.frames, d.masks) for d in datas]
        batched = getattr(self.matter, "refine_batch_uint8", None)
        try:
            if callable(batched):
                return list(batched(clips))
            return [a if a.dtype == np.uint8 else to_uint8(a) for a in self.matter.refine_batch(clips)]
        except Exception as exc:  # noqa: BLE001 - any matter error is recorded as that sample's failure
            if len(datas) == 1:
                log.warning("matter failed on %s: %s", datas[0].segment.key, exc)
                return [MatterFailure(type(exc).__name__, f"matter {self.name}: {exc}")]
        # a batch failed: isolate the bad segment(s) by running one at a time
        return [r for d in datas for r in self._refine([d])]

    def stats(self) -> dict:
        """Busy/idle seconds since the first call; utilisation = busy / (busy + idle); the warm
        figure leaves the first call (warm-up) out."""
        span = self.busy_s + self.idle_s
        warm_busy = self.busy_s - self.first_call_s
        return {
            "calls": self.calls, "segments": self.segments, "frames": self.frames,
            "busy_s": round(self.busy_s, 3), "idle_s": round(self.idle_s, 3),
            "utilisation": round(self.busy_s / span, 4) if span else None,
            "first_call_s": round(self.first_call_s, 3),
            "utilisation_warm": round(warm_busy / (warm_busy + self.idle_s), 4) if warm_busy + self.idle_s else None,
            "load_s": round(self.load_s, 3),
        }
