"""The job's protocol: what the steps send each other, and what the executor may call on them.

The executor (``pipeline.executor``) imports this module and no step module. A run is

    read (streaming task per video) -> matter (actor per GPU) -> encode (task per chunk) -> writer (actor)

- a reader stream yields one :class:`VideoHeader` (the planned keys, the plan's failures, the chunk
  size), then one :class:`Chunk` per ``chunk`` consecutive keys, in key order; the driver routes
  chunks without fetching them (it knows which keys a chunk holds from the header);
- a matter actor's ``refine(chunk)`` returns the chunk's results (a uint8 matte or a :class:`Failure`
  per item);
- ``encode(chunk, results, ...)`` returns a list of encoded samples or failures, which a shard writer
  takes with ``add`` (the encode task hands them to the writer itself and tells the driver how many).

A :class:`Failure` is the one record of a sample (or a whole video) that failed, from the place it
failed to the manifest; only the writer turns it into a row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from mava import schema
from pipeline.errors import InputError
from pipeline.segments import Segment, SegmentData


class Stage(str, enum.Enum):
    """Where a sample failed."""

    PLAN = "plan"        # planning its video or masklet (annotation, size, range, empty masklet)
    READ = "read"        # decoding its frames, or its reader process died on it
    MATTER = "matter"    # the matter raised on it, or returned a matte that does not fit


@dataclass
class Failure:
    """A planned sample (or a whole video) that failed.

    Build it with the constructor of its origin (:meth:`of_video`, :meth:`of_masklet`,
    :meth:`of_segment`), so that rows of the same kind of failure have the same columns filled,
    whoever made them. The sample's ids live in one place: ``segment`` when the segment is known,
    else the key (a masklet key ``{video}_{m|a}{id:03d}_0000`` or a video key ``{video}_video``).
    ``matter`` names the matter the sample was routed to (None for failures found while planning).
    """

    key: str
    video_id: str
    error_type: str
    message: str
    stage: Stage
    segment: Segment | None = None
    matter: str | None = None

    @classmethod
    def of_video(cls, video_id: str, error: InputError) -> "Failure":
        """The single row of a video of which nothing could be planned."""
        return cls(schema.video_failure_key(video_id), video_id, error.error_type, str(error), Stage.PLAN)

    @classmethod
    def of_masklet(cls, video_id: str, source: str, masklet_id: int, error: InputError) -> "Failure":
        """The single row of a masklet of which nothing could be planned (its key has start 0)."""
        key = schema.sample_key(video_id, source, masklet_id, 0)
        return cls(key, video_id, error.error_type, str(error), Stage.PLAN)

    @classmethod
    def of_segment(cls, seg: Segment, error: BaseException | str, stage: Stage, matter: str | None = None,
                   error_type: str | None = None) -> "Failure":
        """A planned segment that failed at ``stage`` (its columns, e.g. frames and overlap, go into the row)."""
        if isinstance(error, InputError):
            etype, msg = error.error_type, str(error)
        elif isinstance(error, BaseException):
            etype, msg = type(error).__name__, str(error)
        else:
            etype, msg = "Error", error
        return cls(seg.key, seg.video_id, error_type or etype, msg, stage, segment=seg, matter=matter)

    def routed_to(self, matter: str) -> "Failure":
        """This failure of a segment that was on its way to ``matter`` (read and matter stages)."""
        if self.stage is not Stage.PLAN and self.matter is None:
            self.matter = matter
        return self

    def ids(self) -> dict[str, Any]:
        """source, masklet_id and start of the sample (None for a whole-video failure)."""
        if self.segment is not None:
            s = self.segment
            return {"source": s.source, "masklet_id": s.masklet_id, "start": s.start}
        try:
            p = schema.parse_key(self.key)
        except ValueError:
            return {"source": None, "masklet_id": None, "start": None}
        return {"source": p.source, "masklet_id": p.masklet_id, "start": p.start}


# --- the stream of one video ----------------------------------------------------------------------


@dataclass
class VideoHeader:
    """First item of a reader stream: the keys that follow (in order, in chunks of ``chunk``), and the
    failures of planning (whole video or masklets), which follow no chunk."""

    video_id: str
    keys: list[str]
    failures: list[Failure]
    chunk: int = 1

    def chunks(self) -> list[list[str]]:
        """The keys of each chunk that follows, in order."""
        n = max(1, self.chunk)
        return [self.keys[i:i + n] for i in range(0, len(self.keys), n)]


@dataclass
class Chunk:
    """Consecutive planned samples of one video, each a SegmentData (to matte) or a Failure (of reading)."""

    video_id: str
    items: list[SegmentData | Failure]

    @property
    def keys(self) -> list[str]:
        return [i.key if isinstance(i, Failure) else i.segment.key for i in self.items]

    def segments(self) -> list[SegmentData]:
        return [i for i in self.items if not isinstance(i, Failure)]


#: the result of one chunk item after the matter: a uint8[T,H,W] matte, or the item's Failure
MatterResult = Any


# --- what the executor may call on the steps ------------------------------------------------------


class MatterStep(Protocol):
    """A matter actor (one per GPU). ``refine`` may run concurrently with ``ping`` (a threaded actor)."""

    def fingerprint(self) -> dict:
        """The identity of the mattes this actor writes (matter name, weights, output options)."""

    def refine(self, chunk: Chunk) -> list:
        """The chunk's results, aligned with its items."""

    def ping(self) -> bool:
        """True when the actor is up. Asked in a concurrency group of its own (``executor.HEALTH``): it
        answers while chunks hold every other thread, so it must be cheap and thread-safe."""

    def running(self) -> int:
        """Chunks being matted now (asked as ``ping`` is, while they run)."""

    def info(self) -> dict:
        """Where the actor runs and what it loaded."""

    def stats(self) -> dict:
        """Busy/idle seconds and counts."""


class ShardWriterStep(Protocol):
    """The writer of one shard: takes each sample's outcome, then commits tar, manifest, marker."""

    def add(self, item: Any) -> None:
        """One encoded sample or Failure; raises ValueError for a key it already has."""

    def add_system_failure(self, key: str, reason: str) -> None:
        """A sample lost to a system failure: the shard must not be marked done."""

    def commit(self) -> Any:
        """Write the shard (marker last); returns an object with ``marker`` and ``failed``; raises when
        the shard must not be marked done."""

    def close(self) -> None:
        """Drop what was spilled; nothing under the output is touched."""


@dataclass
class Steps:
    """The job's steps, as plain callables and classes; the executor runs them on Ray.

    read(video_ref, *read_args, start_chunk=0) -> iterator: a VideoHeader, then its Chunks (from
        ``start_chunk`` on, when a stream is resumed);
    matter(*matter_args) -> a :class:`MatterStep`;
    encode(chunk, results, *encode_args) -> list of what the writer's ``add`` takes;
    writer(index, marker) -> a :class:`ShardWriterStep`;
    lost(video_id, keys, reason, raised=None) -> Failures of keys whose reader died on them for good
        (keys None: the video was never planned), or, with ``raised``, that a reader which raised
        that exception did not deliver (bad input of the video, as ``read_video`` records its own).
    """

    read: Callable[..., Iterator]
    read_args: tuple
    matter: type
    matter_args: tuple
    encode: Callable[..., list]
    encode_args: tuple
    writer: Callable[[int, dict], ShardWriterStep]
    lost: Callable[..., list[Failure]]
