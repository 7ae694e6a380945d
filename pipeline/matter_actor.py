"""The matter step: one actor per GPU (or N on CPU) loads its matter once and mattes chunks of segments.

It takes reader chunks and returns uint8 mattes, so the bytes that leave the GPU are already the bytes
the writer stores. A matter error about the sample becomes that sample's :class:`Failure`; a system
error (GPU out of memory, CUDA/driver/NCCL errors, host memory) ends the process, so Ray restarts the
actor on a clean device and the executor sends the chunks again (bounded by the actor's restarts). It
keeps its own busy/idle clock.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict

import numpy as np

from models.base import MatterConfig, build_matter
from pipeline.errors import is_system_error
from pipeline.protocol import Chunk, Failure, Stage
from pipeline.segments import SegmentData

log = logging.getLogger(__name__)

SYSTEM_EXIT_CODE = 75  # the process exits with this after a system error (Ray restarts the actor)


class MatterActor:
    """Wraps a matter for Ray (a :class:`pipeline.protocol.MatterStep`); use via
    ``ray.remote(MatterActor).options(...)``.

    ``refine`` may be called concurrently (a threaded actor): what a matter can do before the model
    (``prepare_batch``, e.g. host-to-device copies) overlaps the previous batch; the model itself runs
    one batch at a time.
    """

    def __init__(self, matter: str, config: MatterConfig):
        t0 = time.perf_counter()
        self.name = matter
        self.config = config
        self.matter = build_matter(matter, config)
        self.batch = max(1, config.batch_size)
        self.load_s = time.perf_counter() - t0
        self._lock = threading.Lock()
        self._running = 0                        # refine calls in progress (two threads: guarded)
        self._running_lock = threading.Lock()
        self._stager = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage")
        self.busy_s = 0.0
        self.calls = 0
        self.segments = 0
        self.frames = 0
        self.last_end: float | None = None
        self.idle_s = 0.0  # gaps between calls after the first: the GPU waiting for input
        self.first_call_s = 0.0  # the first call (compile, cuDNN autotune, lazy init), left out of "warm"

    def fingerprint(self) -> dict:
        """The identity of the mattes this actor writes (see ``MatterBase.fingerprint``)."""
        return self.matter.fingerprint()

    def ping(self) -> bool:
        return True

    def running(self) -> int:
        """Chunks being matted now (asked in the executor's health group, so it answers while chunks hold
        both threads: a long compile is work, not a stall)."""
        return self._running

    def info(self) -> dict:
        """Where this actor runs and what it loaded."""
        import ray

        return {
            "pid": os.getpid(), "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "matter": self.matter.describe(), "config": asdict(self.config), "load_s": round(self.load_s, 3),
        }

    def refine(self, chunk: Chunk) -> list:
        """The results of a chunk, aligned with its items: a uint8 matte per segment, its Failure per failed
        item. The segments run in batches of ``batch_size``."""
        with self._running_lock:
            self._running += 1
        try:
            return self._refine_chunk(chunk)
        finally:
            with self._running_lock:
                self._running -= 1

    def _refine_chunk(self, chunk: Chunk) -> list:
        datas = chunk.segments()
        batches = [datas[i:i + self.batch] for i in range(0, len(datas), self.batch)]
        mattes: dict[str, np.ndarray | Failure] = {}
        staged = self._stager.submit(self._stage, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            ready = staged.result()
            # stage batch k+1 (host work, uploads) while batch k runs on the model
            staged = self._stager.submit(self._stage, batches[k + 1]) if k + 1 < len(batches) else None
            out = self._timed(batch, ready)
            mattes.update(zip((d.segment.key for d in batch), out))
        return [item.routed_to(self.name) if isinstance(item, Failure) else mattes[item.segment.key]
                for item in chunk.items]

    def _stage(self, datas: list[SegmentData]):
        try:
            return self.matter.prepare_batch(_clips(datas), _keys(datas))
        except Exception as exc:  # noqa: BLE001 - the model path below meets it again and sorts it
            log.info("staging a batch failed (%s: %s); running it unstaged", type(exc).__name__, exc)
            return None

    def _timed(self, datas: list[SegmentData], staged) -> list:
        with self._lock:
            start = time.perf_counter()
            if self.last_end is not None:
                self.idle_s += start - self.last_end
            out = self._refine(datas, staged)
            self.last_end = time.perf_counter()
            took = self.last_end - start
            self.busy_s += took
            if self.calls == 0:
                self.first_call_s = took
            self.calls += 1
            self.segments += len(datas)
            self.frames += sum(d.masks.shape[0] for d in datas)
        return out

    def _run_matter(self, datas: list[SegmentData], staged) -> list[np.ndarray]:
        if staged is not None:
            return list(self.matter.refine_prepared(staged))
        return list(self.matter.refine_batch_uint8(_clips(datas), _keys(datas)))

    def _refine(self, datas: list[SegmentData], staged=None) -> list:
        try:
            return self._run_matter(datas, staged)
        except Exception as exc:  # noqa: BLE001 - sorted into system (restart) and sample (row) errors
            if is_system_error(exc):
                self._die(exc)
            if len(datas) == 1:
                log.warning("matter failed on %s: %s", datas[0].segment.key, exc)
                return [Failure.of_segment(datas[0].segment, f"matter {self.name}: {exc}", Stage.MATTER,
                                           self.name, type(exc).__name__)]
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


def _clips(datas: list[SegmentData]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(d.frames, d.masks) for d in datas]


def _keys(datas: list[SegmentData]) -> list[str]:
    return [d.segment.key for d in datas]

