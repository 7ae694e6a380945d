"""The encode step: a matted segment -> its tar members (JSON, frame JPEGs, alpha PNGs) and manifest row.

Runs as a Ray task per segment, beside the matter (CPU). Member names and columns come from
``mava.schema``; the writer (``pipeline.writer``) puts the encoded samples into shards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from mava import qc, schema
from mava.schema import Col
from pipeline.protocol import Chunk, Failure, Stage
from pipeline.segments import Segment, SegmentData

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


@dataclass
class EncodedSample:
    """Tar members of one sample plus its manifest row (without shard/offset columns)."""

    key: str
    members: list[tuple[str, bytes]] = field(default_factory=list)
    row: dict = field(default_factory=dict)


def _png(alpha_u8: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", alpha_u8, PNG_PARAMS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _jpg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), JPEG_PARAMS)
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def segment_columns(seg: Segment) -> dict:
    """Manifest columns that describe the planned segment."""
    return {
        Col.KEY: seg.key, Col.VIDEO_ID: seg.video_id, Col.SOURCE: seg.source, Col.MASKLET_ID: seg.masklet_id,
        Col.START: seg.start, Col.NUM_FRAMES: seg.length, Col.ANN_FRAMES: seg.ann_frames,
        Col.VIDEO_FRAMES: seg.video_frames, Col.OVERLAP: seg.overlap,
    }


def quality_columns(alpha_u8: np.ndarray, masks: np.ndarray) -> dict:
    """Cheap quality signals of a matte against its input mask, and its QC scores (``mava.qc``; the
    scores across windows and the verdict are added by the shard writer)."""
    a = alpha_u8.astype(np.float32) / 255.0
    hard = alpha_u8 > 127
    union = np.logical_or(hard, masks).sum()
    inter = np.logical_and(hard, masks).sum()
    return {
        Col.MEAN_ALPHA: float(a.mean()),
        Col.SEMI_FRACTION: float(((a > schema.SEMI_LO) & (a < schema.SEMI_HI)).mean()),
        Col.MASK_IOU: float(inter / union) if union else 1.0,
        Col.MASK_AREA: float(masks.mean()),
    } | qc.sample_scores(alpha_u8, masks)


def encode_sample(data: SegmentData, alpha_u8: np.ndarray, matter: str, frames: str = "jpg") -> EncodedSample:
    """Members (json, frame JPEGs, alpha PNGs) and manifest row of one ok sample."""
    seg = data.segment
    t, h, w = data.masks.shape
    if alpha_u8.shape != (t, h, w) or alpha_u8.dtype != np.uint8:
        raise ValueError(f"matte {alpha_u8.dtype}{list(alpha_u8.shape)} does not match masks {[t, h, w]}")
    row = segment_columns(seg) | {Col.HEIGHT: h, Col.WIDTH: w, Col.STATUS: schema.STATUS_OK, Col.MATTER: matter}
    meta = {name: row[name] for name in schema.META_FIELDS if name in row}
    meta |= {name: data.meta[name] for name in schema.OPTIONAL_META_FIELDS if name in data.meta}
    meta[schema.META_MASK_RLES] = [{"size": list(r["size"]), "counts": r["counts"] if isinstance(r["counts"], str)
                                    else r["counts"].decode("ascii")} for r in data.rles]
    members = [(f"{seg.key}.{schema.META_EXT}", json.dumps(meta, sort_keys=True).encode())]
    for i in range(t):
        if frames == "jpg":
            members.append((f"{seg.key}.{schema.frame_ext(i)}", _jpg(data.frames[i])))
        members.append((f"{seg.key}.{schema.alpha_ext(i)}", _png(alpha_u8[i])))
    row |= quality_columns(alpha_u8, data.masks)
    return EncodedSample(seg.key, members, row)


def encode_one(data: SegmentData | Failure, alpha: np.ndarray | Failure, matter: str, frames: str
               ) -> EncodedSample | Failure:
    """One sample: encoded when ok, else the Failure of its reading or of a matte that failed or does not fit."""
    if isinstance(alpha, Failure):
        return alpha
    if isinstance(data, Failure):
        return data.routed_to(matter)
    try:
        return encode_sample(data, alpha, matter, frames)
    except ValueError as exc:  # e.g. a matte whose shape does not match its segment
        return Failure.of_segment(data.segment, f"matter {matter}: {exc}", Stage.MATTER, matter, type(exc).__name__)


def encode(chunk: Chunk, results: Sequence[np.ndarray | Failure], matter: str, frames: str
           ) -> list[EncodedSample | Failure]:
    """The encode step: a chunk and its matter results -> one encoded sample or Failure per item."""
    if len(results) != len(chunk.items):
        raise ValueError(f"{len(results)} matter results for a chunk of {len(chunk.items)} ({chunk.video_id})")
    return [encode_one(d, a, matter, frames) for d, a in zip(chunk.items, results)]
