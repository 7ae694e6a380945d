"""Segments: the unit of work (up to ``segment_len`` consecutive annotated frames of one masklet)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mava import schema


@dataclass(frozen=True)
class Segment:
    """One planned sample. ``start`` and ``length`` count annotated (6 fps) frames."""

    video_id: str
    source: str            # manual | auto
    masklet_id: int
    start: int
    length: int
    overlap: int = 0       # annotated frames shared with the previous window of the same masklet
    fps_ratio: int = 4     # video frames per annotated frame (24 fps / 6 fps)

    @property
    def key(self) -> str:
        return schema.sample_key(self.video_id, self.source, self.masklet_id, self.start)

    @property
    def ann_frames(self) -> list[int]:
        return list(range(self.start, self.start + self.length))

    @property
    def video_frames(self) -> list[int]:
        return [a * self.fps_ratio for a in self.ann_frames]


@dataclass
class SegmentData:
    """A segment with its pixels: frames uint8[T,H,W,3], masks bool[T,H,W], the source RLEs, and
    facts about how the frames were read that the sample metadata records (e.g. ``rotation``)."""

    segment: Segment
    frames: np.ndarray
    masks: np.ndarray
    rles: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def plan_windows(first: int, last: int, segment_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, length, overlap) windows tiling the annotated span ``first..last`` (inclusive).

    Windows of ``segment_len`` frames starting every ``stride`` frames (default ``segment_len``: they
    tile without overlap); the last one is shifted back so it is full when the span allows, and
    ``overlap`` counts the frames each window shares with the previous one. A stride below the segment
    length overlaps every window with the previous (each shared frame is matted twice).
    """
    if segment_len < 1 or segment_len > schema.MAX_SEGMENT_LEN:
        raise ValueError(f"segment_len must be in 1..{schema.MAX_SEGMENT_LEN}, got {segment_len}")
    stride = segment_len if not stride else stride
    if not 1 <= stride <= segment_len:
        raise ValueError(f"stride must be in 1..segment_len ({segment_len}), got {stride}")
    if last < first:
        return []
    span = last - first + 1
    if span <= segment_len:
        return [(first, span, 0)]
    out = []
    start = first
    while start + segment_len <= last + 1:
        out.append((start, segment_len, segment_len - stride if out else 0))
        start += stride
    prev_end = out[-1][0] + out[-1][1]
    if prev_end <= last:  # a tail remains: shift the last window back so it is full
        new = last + 1 - segment_len
        out.append((new, segment_len, prev_end - new))
    return out


def plan_masklet(video_id: str, source: str, masklet_id: int, visible: "np.ndarray | list[bool]",
                 segment_len: int = 12, fps_ratio: int = 4, stride: int | None = None) -> list[Segment]:
    """Segments of one masklet from its per-annotated-frame visibility (non-empty mask); ``stride``
    as in :func:`plan_windows`."""
    vis = np.flatnonzero(np.asarray(visible, dtype=bool))
    if vis.size == 0:
        return []
    return [Segment(video_id, source, int(masklet_id), s, n, o, fps_ratio)
            for s, n, o in plan_windows(int(vis[0]), int(vis[-1]), segment_len, stride)]
