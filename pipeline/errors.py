"""Typed input errors. Each fails one sample (or one video) and is recorded in the manifest."""

from __future__ import annotations


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
