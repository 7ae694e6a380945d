"""The writer step: write shards as their encoded samples arrive.

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
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mava import qc, schema
from mava.folder import SplitDir
from mava.sample import member_map
from mava.schema import Col
from pipeline.encode import EncodedSample, segment_columns
from pipeline.protocol import Failure, Stage

log = logging.getLogger(__name__)


def failure_row(f: Failure) -> dict:
    """Manifest row of a sample (or a whole video) that failed: the only place rows of failures are made."""
    if f.segment is not None:
        row = segment_columns(f.segment)
    else:
        ids = f.ids()
        row = {Col.KEY: f.key, Col.VIDEO_ID: f.video_id, Col.SOURCE: ids["source"],
               Col.MASKLET_ID: ids["masklet_id"], Col.START: ids["start"]}
    return row | {Col.STATUS: schema.STATUS_FAILED, Col.ERROR_TYPE: f.error_type, Col.ERROR: f.message,
                  Col.MATTER: f.matter}


def manifest_table(rows: Iterable[dict]) -> pa.Table:
    """Rows -> a table with exactly MANIFEST_SCHEMA (missing columns are null)."""
    rows = list(rows)
    return pa.table({name: [r.get(name) for r in rows] for name in schema.MANIFEST_COLUMNS},
                    schema=schema.MANIFEST_SCHEMA)


# --- the streaming shard writer -------------------------------------------------------------------


class ShardIncomplete(RuntimeError):
    """A shard that must not be marked done: ``system`` when samples were lost to system failures (the
    shard may be redone), else the matter failed on too many of its samples."""

    def __init__(self, message: str, system: bool = False):
        super().__init__(message)
        self.system = system

    def __reduce__(self):  # picklable across Ray processes
        return (type(self), (str(self), self.system))


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

    @property
    def count(self) -> int:
        """Samples taken so far (ok and failed)."""
        return len(self._samples) + len(self._failures)

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
                                  f"e.g. {self._system[0]}", system=True)
        if self.max_matter_failures is None:
            return
        matter_failed = sum(f.stage is Stage.MATTER for f in self._failures.values())
        sent = matter_failed + len(self._samples)
        if sent and matter_failed / sent > self.max_matter_failures:
            kinds = collections.Counter(f.error_type for f in self._failures.values() if f.stage is Stage.MATTER)
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
        d.make_layout()
        keys = sorted(self._samples)
        with d.atomic_file(schema.shard_tar(self.split, self.index)) as f:  # streamed from the spill file
            spans, tar_size, tar_sha = write_tar(f, ((k, self._members(k)) for k in keys))
        rows = []
        for k in keys:
            off, size, n = spans[k]
            rows.append(self._samples[k][2] | {Col.TAR_OFFSET: off, Col.TAR_SIZE: size, Col.NUM_MEMBERS: n})
        rows += [failure_row(f) for f in self._failures.values()]
        # QC: scores across the windows of each masklet (decoded back from the spill file) and verdicts
        qc.score_rows(rows, lambda k: member_map(dict(self._members(k)), k))
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
