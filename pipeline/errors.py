"""Typed input errors, the one failure record that carries them to the manifest, and the rule that
tells a system failure (retried) from a sample failure (recorded)."""

from __future__ import annotations

from dataclasses import dataclass

from mava import schema
from pipeline.segments import Segment


class SampleError(Exception):
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


class VideoMissing(SampleError):
    """The video file (or frame folder) does not exist."""


class VideoCorrupt(SampleError):
    """The video cannot be opened or a requested frame cannot be decoded."""


class AnnotationMissing(SampleError):
    """The masklet JSON file does not exist."""


class AnnotationMalformed(SampleError):
    """The masklet JSON is not valid JSON or lacks/garbles required fields."""


class RleSizeMismatch(SampleError):
    """An RLE's ``size`` differs from the video's frame size."""


class AnnotationOutOfRange(SampleError):
    """Annotated frames map past the end of the video."""


class EmptyMasklet(SampleError):
    """A masklet is never visible, so it has no segment."""


class UnsafeId(SampleError):
    """A video or masklet id that could escape the output folder or break a key."""


class ReaderError(SampleError):
    """An unexpected error while planning or reading a video (a library or reader bug)."""


# --- the one failure record ------------------------------------------------------------------------


@dataclass
class Failure:
    """A planned sample (or a whole video) that failed, from wherever it failed to the manifest.

    Readers, the matter actor and the encoder create it; only the writer turns it into a row.
    ``error`` is the typed input error when there is one; ``error_type``/``message`` are what the
    manifest records. ``segment`` (when known) fills the row's segment columns; ``matter`` names the
    matter the sample was routed to (None for failures found while planning). ``stage`` says where it
    failed: plan | read | matter (the matter raised or returned a matte that does not fit).
    """

    key: str
    video_id: str
    source: str | None = None
    masklet_id: int | None = None
    start: int | None = None
    error: SampleError | None = None
    error_type: str = ""
    message: str = ""
    segment: Segment | None = None
    matter: str | None = None
    stage: str = "plan"

    def __post_init__(self):
        if self.error is not None:
            self.error_type = self.error_type or self.error.error_type
            self.message = self.message or str(self.error)

    @classmethod
    def of_matter(cls, seg: Segment, error_type: str, message: str, matter: str) -> "Failure":
        """The matter failed on a segment (its columns, e.g. frames and overlap, go into the row)."""
        return cls(seg.key, seg.video_id, seg.source, seg.masklet_id, seg.start, None, error_type, message,
                   segment=seg, matter=matter, stage="matter")

    @classmethod
    def of_video(cls, video_id: str, error: SampleError) -> "Failure":
        """The single row of a video of which nothing could be planned."""
        return cls(schema.video_failure_key(video_id), video_id, error=error)


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
