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
    """A segment with its pixels: frames uint8[T,H,W,3], masks bool[T,H,W], and the source RLEs."""

    segment: Segment
    frames: np.ndarray
    masks: np.ndarray
    rles: list[dict] = field(default_factory=list)
