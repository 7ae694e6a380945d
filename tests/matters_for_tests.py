"""Matters used by the job tests (importable as ``tests.matters_for_tests:Name`` inside Ray workers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from models.base import MatterBase, MatterConfig


class SlowMaskMatter(MatterBase):
    """alpha = mask, after a short sleep (gives a test time to kill the job mid-run); option
    ``restarted_delay``: the sleep in an actor Ray restarted (the rest of a run after its fault)."""

    name = "slow-mask"

    def __init__(self, config: MatterConfig):
        self.delay = float(config.extra.get("delay", 0.3))
        if "restarted_delay" in config.extra:
            import ray

            if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
                self.delay = float(config.extra["restarted_delay"])

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return masks.astype(np.float32)


class DieOnceMatter(MatterBase):
    """alpha = mask, but the process dies (hard) on its first segment, once per marker file."""

    name = "die-once"

    def __init__(self, config: MatterConfig):
        self.marker = Path(config.extra["marker"])

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return masks.astype(np.float32)


class FailOnKeyMatter(MatterBase):
    """alpha = mask, but raises on segments whose first mask pixel count is odd (a matter exception)."""

    name = "fail-some"

    def __init__(self, config: MatterConfig):
        pass

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if int(masks[0].sum()) % 2:
            raise RuntimeError("injected matter failure")
        return masks.astype(np.float32)


class DieAlwaysMatter(MatterBase):
    """Kills its process on every segment: a shard it touches can never complete."""

    name = "die-always"

    def __init__(self, config: MatterConfig):
        pass

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        os._exit(1)


class OomMatter(MatterBase):
    """Raises a CUDA out-of-memory error on every segment: a system failure, never a row."""

    name = "oom"

    def __init__(self, config: MatterConfig):
        pass

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)")


class OomOnceMatter(MatterBase):
    """alpha = mask, but the first segment ever (once per marker file) hits a CUDA out-of-memory error."""

    name = "oom-once"

    def __init__(self, config: MatterConfig):
        self.marker = Path(config.extra["marker"])

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return masks.astype(np.float32)


class AlwaysWrongMatter(MatterBase):
    """Raises an error that looks like a sample problem on every segment (the failure-fraction guard)."""

    name = "always-wrong"

    def __init__(self, config: MatterConfig):
        pass

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise ValueError("weird tensor shape from an unknown library bug")


def key_level(key: str) -> int:
    """The alpha level KeyedMatter writes for a sample key."""
    import zlib

    return 50 + zlib.crc32(key.encode()) % 200


class KeyedMatter(MatterBase):
    """alpha = mask x a level derived from the sample key: shows the actor passes keys to matters."""

    name = "keyed"

    def __init__(self, config: MatterConfig):
        pass

    def refine_batch_uint8(self, clips, keys=None):
        if keys is None:
            raise ValueError("no keys given")
        return [m.astype(np.uint8) * key_level(k) for (_, m), k in zip(clips, keys)]


class UndeclaredResolveMatter(MatterBase):
    """alpha = mask, but it fingerprints ``seed`` (not declared resolved) otherwise than configured."""

    name = "undeclared-resolve"
    reads = ("seed",)

    def __init__(self, config: MatterConfig):
        self.cfg = config

    def resolved_options(self) -> dict:
        return {"seed": self.cfg.seed + 1}

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return masks.astype(np.float32)
