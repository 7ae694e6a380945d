"""Writer side: encode one matted segment into tar members, then write a whole shard atomically.

A shard becomes visible in three renames: tar, manifest, done marker (the marker last). The bytes
depend only on the samples, so rewriting a shard of a deterministic matter gives identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tarfile
import uuid
from dataclasses import dataclass, field
from typing import Iterable

import cv2
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mava import schema
from pipeline.segments import Segment, SegmentData

log = logging.getLogger(__name__)

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
        "key": seg.key, "video_id": seg.video_id, "source": seg.source, "masklet_id": seg.masklet_id,
        "start": seg.start, "num_frames": seg.length, "ann_frames": seg.ann_frames,
        "video_frames": seg.video_frames, "overlap": seg.overlap,
    }


def quality_columns(alpha_u8: np.ndarray, masks: np.ndarray) -> dict:
    """Cheap quality signals of a matte against its input mask."""
    a = alpha_u8.astype(np.float32) / 255.0
    hard = alpha_u8 > 127
    union = np.logical_or(hard, masks).sum()
    inter = np.logical_and(hard, masks).sum()
    return {
        "mean_alpha": float(a.mean()),
        "semi_fraction": float(((a > schema.SEMI_LO) & (a < schema.SEMI_HI)).mean()),
        "mask_iou": float(inter / union) if union else 1.0,
        "mask_area": float(masks.mean()),
    }


def encode_sample(data: SegmentData, alpha_u8: np.ndarray, matter: str, frames: str = "jpg") -> EncodedSample:
    """Members (json, frame JPEGs, alpha PNGs) and manifest row of one ok sample."""
    seg = data.segment
    t, h, w = data.masks.shape
    if alpha_u8.shape != (t, h, w) or alpha_u8.dtype != np.uint8:
        raise ValueError(f"matte {alpha_u8.dtype}{list(alpha_u8.shape)} does not match masks {[t, h, w]}")
    row = segment_columns(seg) | {"height": h, "width": w, "status": schema.STATUS_OK, "matter": matter}
    meta = {name: row[name] for name in schema.META_FIELDS if name in row}
    meta["mask_rles"] = [{"size": list(r["size"]), "counts": r["counts"] if isinstance(r["counts"], str)
                          else r["counts"].decode("ascii")} for r in data.rles]
    members = [(f"{seg.key}.{schema.META_EXT}", json.dumps(meta, sort_keys=True).encode())]
    for i in range(t):
        if frames == "jpg":
            members.append((f"{seg.key}.{schema.frame_ext(i)}", _jpg(data.frames[i])))
        members.append((f"{seg.key}.{schema.alpha_ext(i)}", _png(alpha_u8[i])))
    row |= quality_columns(alpha_u8, data.masks)
    return EncodedSample(seg.key, members, row)


def failure_row(key: str, video_id: str, error_type: str, error: str, *, source: str | None = None,
                masklet_id: int | None = None, start: int | None = None, segment: Segment | None = None,
                matter: str | None = None) -> dict:
    """Manifest row of a sample (or a whole video) that failed."""
    row = segment_columns(segment) if segment is not None else {
        "key": key, "video_id": video_id, "source": source, "masklet_id": masklet_id, "start": start}
    return row | {"status": schema.STATUS_FAILED, "error_type": error_type, "error": error, "matter": matter}


class _HashingWriter:
    """A write-only file wrapper that counts and hashes the bytes going through it."""

    def __init__(self, f):
        self.f, self.size, self.sha256 = f, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.f.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _write_tar(f, samples: list[EncodedSample]) -> tuple[dict[str, tuple[int, int, int]], int, str]:
    """Stream a deterministic tar (fixed mtime/owner/mode) into ``f``.

    Returns each sample's (offset, size, members), the tar's size and its sha256.
    """
    out = _HashingWriter(f)
    spans = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            start = tar.offset
            for name, data in s.members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            spans[s.key] = (start, tar.offset - start, len(s.members))
    return spans, out.size, out.sha256.hexdigest()


def _tmp_name(path: str) -> str:
    return f"{path}.{uuid.uuid4().hex[:8]}{schema.TMP_SUFFIX}"


def _atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    tmp = _tmp_name(path)
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def manifest_table(rows: Iterable[dict]) -> pa.Table:
    """Rows -> a table with exactly MANIFEST_SCHEMA (missing columns are null)."""
    rows = list(rows)
    return pa.table({name: [r.get(name) for r in rows] for name in schema.MANIFEST_COLUMNS},
                    schema=schema.MANIFEST_SCHEMA)


def write_shard(out_split: str, split: str, index: int, samples: list[EncodedSample],
                failures: list[dict], extra: dict | None = None) -> dict:
    """Write tar, manifest and done marker of one shard; return the marker's content.

    ``out_split`` is ``<out>/<split>`` (local path or fsspec URL). Samples are written in key order.
    """
    fs, root = fsspec.core.url_to_fs(out_split)
    name = schema.shard_name(split, index)
    for sub in ("shards", "manifest", "done"):
        fs.makedirs(posixpath.join(root, sub), exist_ok=True)
    samples = sorted(samples, key=lambda s: s.key)
    keys = [s.key for s in samples] + [r["key"] for r in failures]
    if len(set(keys)) != len(keys):
        raise ValueError(f"shard {name}: duplicate keys")
    tar_path = posixpath.join(root, schema.shard_tar(split, index))
    tmp = _tmp_name(tar_path)
    with fs.open(tmp, "wb") as f:  # streamed: the shard is never held twice in memory
        spans, tar_size, tar_sha = _write_tar(f, samples)
    rows = []
    for s in samples:
        off, size, n = spans[s.key]
        rows.append(s.row | {"tar_offset": off, "tar_size": size, "num_members": n})
    rows += failures
    rows = [r | {"shard": name} for r in sorted(rows, key=lambda r: r["key"])]
    sink = io.BytesIO()
    pq.write_table(manifest_table(rows), sink, compression="zstd")
    manifest = sink.getvalue()

    fs.mv(tmp, tar_path)
    _atomic_write(fs, posixpath.join(root, schema.shard_manifest(split, index)), manifest)
    ok = sum(r["status"] == schema.STATUS_OK for r in rows)
    marker = {
        "shard": name, schema.MARKER_SAMPLES: len(rows), schema.MARKER_OK: ok, schema.MARKER_FAILED: len(rows) - ok,
        schema.MARKER_FRAMES: int(sum(r["num_frames"] or 0 for r in rows if r["status"] == schema.STATUS_OK)),
        schema.MARKER_TAR_BYTES: tar_size, schema.MARKER_TAR_SHA256: tar_sha,
        schema.MARKER_MANIFEST_SHA256: hashlib.sha256(manifest).hexdigest(),
    } | (extra or {})
    _atomic_write(fs, posixpath.join(root, schema.shard_done(split, index)),
                  json.dumps(marker, indent=1, sort_keys=True).encode())
    log.info("wrote shard %s: %d ok, %d failed, %d bytes", name, ok, len(rows) - ok, tar_size)
    return marker
