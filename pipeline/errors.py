"""Typed input errors (a problem of one sample, recorded as its failed row) and the rule that tells a
system failure (retried) from a sample failure. The record that carries a failure to the manifest is
``pipeline.protocol.Failure``."""

from __future__ import annotations


class InputError(Exception):
    """A problem with one input file; the run records it and goes on.

    ``path`` names the offending file, ``problem`` says what is wrong with it.
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    @property
    def error_type(self) -> str:
        return type(self).__name__

    def __reduce__(self):  # picklable across Ray processes
        return (type(self), (self.path, self.problem))


class VideoMissing(InputError):
    """The video file (or frame folder) does not exist."""


class VideoCorrupt(InputError):
    """The video cannot be opened or a requested frame cannot be decoded."""


class AnnotationMissing(InputError):
    """The masklet JSON file does not exist."""


class AnnotationMalformed(InputError):
    """The masklet JSON is not valid JSON or lacks/garbles required fields."""


class RleSizeMismatch(InputError):
    """An RLE's ``size`` differs from the video's frame size."""


class AnnotationOutOfRange(InputError):
    """Annotated frames map past the end of the video."""


class EmptyMasklet(InputError):
    """A masklet is never visible, so it has no segment."""


class UnsafeId(InputError):
    """A video or masklet id that could escape the output folder or break a key."""


class ReaderCrashed(InputError):
    """The reader process died on this video every time it was retried (e.g. the decoder crashed)."""


class ReaderError(InputError):
    """An unexpected error while planning or reading a video (a library or reader bug)."""


# --- system failures -------------------------------------------------------------------------------

#: Messages of errors that are about the machine, not the sample: the GPU ran out of memory, the CUDA
#: context or driver is broken, a collective failed. Retried on a fresh actor, never recorded as a row.
SYSTEM_ERROR_PATTERNS = (
    "out of memory", "cuda error", "cuda driver", "cudnn_status", "cublas_status", "cufft_status",
    "cusolver_status", "nccl", "device-side assert", "illegal memory access", "an illegal instruction",
    "ecc error", "no cuda gpus are available", "cuda-capable device", "driver shutting down",
    "unspecified launch failure", "hip error", "xpu error",
)


def is_system_error(exc: BaseException) -> bool:
    """True when ``exc`` is a failure of the machine (GPU memory, CUDA/driver, NCCL, host memory),
    which says nothing about the sample and must not become a failed row."""
    if isinstance(exc, MemoryError):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"OutOfMemoryError", "AcceleratorError", "CudaError", "NcclError", "DistBackendError"}:
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(p in text for p in SYSTEM_ERROR_PATTERNS)
