"""The writer step: encode a matted segment into tar members, and write shards as samples arrive.

A :class:`ShardWriter` appends each encoded sample to a local spill file as it arrives (memory: the
index and a few samples, not the shard) and, on :meth:`ShardWriter.commit`, writes the shard in key
order through temporary names: tar, manifest, then the done marker (last). The bytes depend only on
the samples, so rewriting a shard of a deterministic matter gives identical files, whatever the order
in which samples arrived. The writer is the only place where failures become manifest rows.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mava import schema
from mava.manifest import SplitDir
from mava.schema import Col
from pipeline.errors import Failure
from pipeline.segments import Segment, SegmentData

log = logging.getLogger(__name__)

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


# --- encoding -------------------------------------------------------------------------------------


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
    """Cheap quality signals of a matte against its input mask."""
    a = alpha_u8.astype(np.float32) / 255.0
    hard = alpha_u8 > 127
    union = np.logical_or(hard, masks).sum()
    inter = np.logical_and(hard, masks).sum()
    return {
        Col.MEAN_ALPHA: float(a.mean()),
        Col.SEMI_FRACTION: float(((a > schema.SEMI_LO) & (a < schema.SEMI_HI)).mean()),
        Col.MASK_IOU: float(inter / union) if union else 1.0,
        Col.MASK_AREA: float(masks.mean()),
    }


def encode_sample(data: SegmentData, alpha_u8: np.ndarray, matter: str, frames: str = "jpg") -> EncodedSample:
    """Members (json, frame JPEGs, alpha PNGs) and manifest row of one ok sample."""
    seg = data.segment
    t, h, w = data.masks.shape
    if alpha_u8.shape != (t, h, w) or alpha_u8.dtype != np.uint8:
        raise ValueError(f"matte {alpha_u8.dtype}{list(alpha_u8.shape)} does not match masks {[t, h, w]}")
    row = segment_columns(seg) | {Col.HEIGHT: h, Col.WIDTH: w, Col.STATUS: schema.STATUS_OK, Col.MATTER: matter}
    meta = {name: row[name] for name in schema.META_FIELDS if name in row}
    meta |= {name: data.meta[name] for name in schema.OPTIONAL_META_FIELDS if name in data.meta}
    meta["mask_rles"] = [{"size": list(r["size"]), "counts": r["counts"] if isinstance(r["counts"], str)
                          else r["counts"].decode("ascii")} for r in data.rles]
    members = [(f"{seg.key}.{schema.META_EXT}", json.dumps(meta, sort_keys=True).encode())]
    for i in range(t):
        if frames == "jpg":
            members.append((f"{seg.key}.{schema.frame_ext(i)}", _jpg(data.frames[i])))
        members.append((f"{seg.key}.{schema.alpha_ext(i)}", _png(alpha_u8[i])))
    row |= quality_columns(alpha_u8, data.masks)
    return EncodedSample(seg.key, members, row)


def encode(data: SegmentData, alpha: np.ndarray | Failure, matter: str, frames: str) -> EncodedSample | Failure:
    """The encode step: an encoded ok sample, or the Failure of a matte that failed or does not fit."""
    if isinstance(alpha, Failure):
        return alpha
    try:
        return encode_sample(data, alpha, matter, frames)
    except ValueError as exc:  # e.g. a matte whose shape does not match its segment
        return Failure.of_matter(data.segment, type(exc).__name__, f"matter {matter}: {exc}", matter)


def failure_row(f: Failure) -> dict:
    """Manifest row of a sample (or a whole video) that failed: the only place rows of failures are made."""
    row = segment_columns(f.segment) if f.segment is not None else {
        Col.KEY: f.key, Col.VIDEO_ID: f.video_id, Col.SOURCE: f.source, Col.MASKLET_ID: f.masklet_id,
        Col.START: f.start}
    return row | {Col.STATUS: schema.STATUS_FAILED, Col.ERROR_TYPE: f.error_type, Col.ERROR: f.message,
                  Col.MATTER: f.matter}


def manifest_table(rows: Iterable[dict]) -> pa.Table:
    """Rows -> a table with exactly MANIFEST_SCHEMA (missing columns are null)."""
    rows = list(rows)
    return pa.table({name: [r.get(name) for r in rows] for name in schema.MANIFEST_COLUMNS},
                    schema=schema.MANIFEST_SCHEMA)


# --- the streaming shard writer -------------------------------------------------------------------


class ShardIncomplete(RuntimeError):
    """A shard that must not be marked done (a system failure, or too many matter failures)."""


@dataclass
class ShardResult:
    """What a committed shard holds: its done marker and failure counts by error type."""

    index: int
    marker: dict
    failed: dict[str, int]


class _HashingWriter:
    """A write-only file wrapper that counts and hashes the bytes going through it."""

    def __init__(self, f: IO[bytes]):
        self.f, self.size, self.sha256 = f, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.f.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def write_tar(f: IO[bytes], samples: Iterable[tuple[str, Iterator[tuple[str, bytes]]]]
              ) -> tuple[dict[str, tuple[int, int, int]], int, str]:
    """Stream a deterministic tar (fixed mtime/owner/mode, member order as given) into ``f``.

    ``samples`` yields (key, members); returns each key's (offset, size, members), the tar's size and
    sha256. (webdataset's TarWriter sorts a sample's members by name and stamps its own mode and
    owner, which would break the member order mava/schema.py defines and the bytes of existing shards.)
    """
    out = _HashingWriter(f)
    spans = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            start, n = tar.offset, 0
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
                n += 1
            spans[key] = (start, tar.offset - start, n)
    return spans, out.size, out.sha256.hexdigest()


class ShardWriter:
    """Writes one shard as its samples arrive (see the module docstring).

    ``marker`` (the shard's videos and fingerprint) joins the done marker. ``max_matter_failures``:
    the largest fraction of the samples sent to the matter that may fail in the matter before the
    shard is refused (not marked done); None disables the guard.
    """

    def __init__(self, out_split: str | SplitDir, split: str, index: int, marker: dict | None = None,
                 max_matter_failures: float | None = None, spill_dir: str | None = None):
        self.dir = out_split if isinstance(out_split, SplitDir) else SplitDir(str(out_split))
        self.split, self.index = split, index
        self.name = schema.shard_name(split, index)
        self.extra = dict(marker or {})
        self.max_matter_failures = max_matter_failures
        self.spill_dir = spill_dir
        self._spill: IO[bytes] | None = None
        self._samples: dict[str, tuple[int, list[tuple[str, int]], dict]] = {}   # key -> (offset, members, row)
        self._failures: dict[str, Failure] = {}
        self._system: list[str] = []

    def add(self, item: EncodedSample | Failure) -> None:
        """Take one sample's outcome; its members go to the spill file at once."""
        key = item.key
        if key in self._samples or key in self._failures:
            raise ValueError(f"shard {self.name}: duplicate keys ({key})")
        if isinstance(item, Failure):
            self._failures[key] = item
            return
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix=f"{self.name}-", suffix=".spill", dir=self.spill_dir)
        offset = self._spill.seek(0, io.SEEK_END)
        for _, data in item.members:
            self._spill.write(data)
        self._samples[key] = (offset, [(name, len(data)) for name, data in item.members], item.row)

    def add_system_failure(self, key: str, reason: str) -> None:
        """A sample lost to a system failure (dead actor, lost node): the shard will not be marked done."""
        self._system.append(f"{key}: {reason}")

    def _members(self, key: str) -> Iterator[tuple[str, bytes]]:
        offset, members, _ = self._samples[key]
        assert self._spill is not None
        self._spill.seek(offset)
        for name, size in members:
            yield name, self._spill.read(size)

    def _check_complete(self) -> None:
        if self._system:
            raise ShardIncomplete(f"shard {self.name}: {len(self._system)} sample(s) lost to system failures, "
                                  f"e.g. {self._system[0]}")
        if self.max_matter_failures is None:
            return
        matter_failed = sum(f.stage == "matter" for f in self._failures.values())
        sent = matter_failed + len(self._samples)
        if sent and matter_failed / sent > self.max_matter_failures:
            kinds = collections.Counter(f.error_type for f in self._failures.values() if f.stage == "matter")
            raise ShardIncomplete(
                f"shard {self.name}: the matter failed on {matter_failed} of {sent} samples "
                f"({dict(kinds)}), more than --max-matter-failures {self.max_matter_failures:g}: not marked done")

    def commit(self) -> ShardResult:
        """Write tar, manifest and done marker (in that order, each through a temporary name)."""
        try:
            self._check_complete()
            return self._commit()
        finally:
            self.close()

    def _commit(self) -> ShardResult:
        d = self.dir
        d.makedirs()
        keys = sorted(self._samples)
        with d.atomic_file(schema.shard_tar(self.split, self.index)) as f:  # streamed from the spill file
            spans, tar_size, tar_sha = write_tar(f, ((k, self._members(k)) for k in keys))
        rows = []
        for k in keys:
            off, size, n = spans[k]
            rows.append(self._samples[k][2] | {Col.TAR_OFFSET: off, Col.TAR_SIZE: size, Col.NUM_MEMBERS: n})
        rows += [failure_row(f) for f in self._failures.values()]
        rows = [r | {Col.SHARD: self.name} for r in sorted(rows, key=lambda r: r[Col.KEY])]
        sink = io.BytesIO()
        pq.write_table(manifest_table(rows), sink, compression="zstd")
        manifest = sink.getvalue()
        d.write_atomic(schema.shard_manifest(self.split, self.index), manifest)
        ok = len(keys)
        marker = {
            schema.MARKER_SHARD: self.name, schema.MARKER_SAMPLES: len(rows), schema.MARKER_OK: ok,
            schema.MARKER_FAILED: len(rows) - ok,
            schema.MARKER_FRAMES: int(sum(r[Col.NUM_FRAMES] or 0 for r in rows if r[Col.STATUS] == schema.STATUS_OK)),
            schema.MARKER_TAR_BYTES: tar_size, schema.MARKER_TAR_SHA256: tar_sha,
            schema.MARKER_MANIFEST_SHA256: hashlib.sha256(manifest).hexdigest(),
        } | self.extra
        d.write_atomic(schema.shard_done(self.split, self.index), json.dumps(marker, indent=1, sort_keys=True).encode())
        failed = collections.Counter(f.error_type for f in self._failures.values())
        log.info("wrote shard %s: %d ok, %d failed, %d bytes", self.name, ok, len(rows) - ok, tar_size)
        return ShardResult(self.index, marker, dict(sorted(failed.items())))

    def close(self) -> None:
        """Drop the spill file (nothing under the output is touched)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def write_shard(out_split: str | SplitDir, split: str, index: int, samples: Iterable[EncodedSample],
                failures: Iterable[Failure] = (), extra: dict | None = None) -> dict:
    """Write a whole shard at once (samples in any order); returns its done marker."""
    w = ShardWriter(out_split, split, index, extra)
    for item in [*samples, *failures]:
        w.add(item)
    return w.commit().marker
