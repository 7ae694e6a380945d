"""The matter step: one actor per GPU (or N on CPU) loads its matter once and mattes batches.

It takes segments and returns uint8 mattes, so the bytes that leave the GPU are already the bytes
the writer stores. A matter error about the sample becomes that sample's :class:`Failure`; a system
error (GPU out of memory, CUDA/driver/NCCL errors, host memory) ends the process, so Ray restarts
the actor on a clean device and retries the batch (bounded by the actor's restarts); if it persists,
the batch is lost, its shard is not marked done, and the run fails. It keeps its own busy/idle clock.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from mava import schema
from models.base import MatterConfig, build_matter, to_uint8
from pipeline.errors import Failure, is_system_error
from pipeline.segments import SegmentData

log = logging.getLogger(__name__)

SYSTEM_EXIT_CODE = 75  # the process exits with this after a system error (Ray restarts the actor)


@dataclass
class BatchDone:
    """The last return of :meth:`MatterActor.refine`: a small token the driver waits on."""

    segments: int
    busy_s: float


class MatterActor:
    """Wraps a matter for Ray; use via ``ray.remote(MatterActor).options(...)``.

    ``refine`` may be called concurrently (a threaded actor): what a matter can do before the model
    (``prepare_batch``, e.g. host-to-device copies) overlaps the previous batch; the model itself runs
    one batch at a time.
    """

    def __init__(self, matter: str, config: MatterConfig):
        t0 = time.perf_counter()
        self.name = matter
        self.config = config
        self.matter = build_matter(matter, config)
        self.load_s = time.perf_counter() - t0
        self._takes_keys = _accepts_keys(self.matter)
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.calls = 0
        self.segments = 0
        self.frames = 0
        self.last_end: float | None = None
        self.idle_s = 0.0  # gaps between calls after the first: the GPU waiting for input
        self.first_call_s = 0.0  # the first call (compile, cuDNN autotune, lazy init), left out of "warm"

    def fingerprint(self) -> dict:
        """The identity of the mattes this actor writes (see ``MatterBase.fingerprint``)."""
        fp = getattr(self.matter, "fingerprint", None)
        return fp() if callable(fp) else {schema.FP_NAME: self.name, schema.FP_WEIGHTS: None,
                                           schema.FP_OPTIONS: asdict(self.config), schema.FP_CONSTANTS: {}}

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

    def refine(self, *datas: SegmentData) -> tuple:
        """One result per segment (a uint8 matte or a Failure), then a :class:`BatchDone`."""
        staged = None
        prepare = getattr(self.matter, "prepare_batch", None)
        if callable(prepare) and callable(getattr(self.matter, "refine_prepared", None)):
            try:
                staged = prepare([(d.frames, d.masks) for d in datas], [d.segment.key for d in datas])
            except Exception as exc:  # noqa: BLE001 - the model path below meets it again and sorts it
                log.info("staging a batch failed (%s: %s); running it unstaged", type(exc).__name__, exc)
        with self._lock:
            start = time.perf_counter()
            if self.last_end is not None:
                self.idle_s += start - self.last_end
            out = self._refine(list(datas), staged)
            self.last_end = time.perf_counter()
            took = self.last_end - start
            self.busy_s += took
            if self.calls == 0:
                self.first_call_s = took
            self.calls += 1
            self.segments += len(datas)
            self.frames += sum(d.masks.shape[0] for d in datas)
        return (*out, BatchDone(len(datas), took))

    def _run_matter(self, datas: list[SegmentData], staged) -> list[np.ndarray]:
        clips = [(d.frames, d.masks) for d in datas]
        kw = {"keys": [d.segment.key for d in datas]} if self._takes_keys else {}
        if staged is not None:
            return list(self.matter.refine_prepared(staged))
        batched = getattr(self.matter, "refine_batch_uint8", None)
        if callable(batched):
            return list(batched(clips, **kw))
        return [a if a.dtype == np.uint8 else to_uint8(a) for a in self.matter.refine_batch(clips, **kw)]

    def _refine(self, datas: list[SegmentData], staged=None) -> list:
        try:
            return self._run_matter(datas, staged)
        except Exception as exc:  # noqa: BLE001 - sorted into system (restart) and sample (row) errors
            if is_system_error(exc):
                self._die(exc)
            if len(datas) == 1:
                log.warning("matter failed on %s: %s", datas[0].segment.key, exc)
                return [Failure.of_matter(datas[0].segment, type(exc).__name__, f"matter {self.name}: {exc}",
                                          self.name)]
        # a batch failed: isolate the bad segment(s) by running one at a time
        return [r for d in datas for r in self._refine([d])]

    def _die(self, exc: BaseException) -> None:
        """A system error: end this process so Ray restarts the actor on a clean device and retries."""
        log.error("system error in matter %s (pid %d), restarting the actor: %s: %s",
                  self.name, os.getpid(), type(exc).__name__, exc)
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stderr.flush()
        os._exit(SYSTEM_EXIT_CODE)

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


def _accepts_keys(matter) -> bool:
    """True when the matter's batch call takes the samples' keys (to seed noise per sample)."""
    fn = getattr(matter, "refine_batch_uint8", None) or getattr(matter, "refine_batch", None)
    try:
        return fn is not None and "keys" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
