"""The split folder: ``<out>/<split>`` (a local path or any fsspec URL) as one filesystem object.

:class:`SplitDir` is an fsspec ``DirFileSystem`` rooted at the split folder (as datatrove's
``DataFolder``): every path it takes or returns is relative to the split folder, so callers never
join paths or reach for the underlying filesystem. It adds what the MA-V layout needs: the shard,
manifest and marker files, JSON and manifest reading that names the file it could not read, ranged
sample reads, and atomic writes (temporary name, flush, rename).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import posixpath
import uuid
from typing import IO, Iterator

import fsspec
import pyarrow as pa
from fsspec.implementations.dirfs import DirFileSystem

from mava import schema
from mava.lifecycle import read_parquet
from mava.sample import member_map, parse_member_bytes, read_sample_bytes
from mava.schema import Col

log = logging.getLogger(__name__)


class UnreadableFile(ValueError):
    """A file of the split (manifest, done marker, run.json) that cannot be read or parsed; names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # picklable across Ray processes
        return (type(self), (self.path, self.reason))


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (where fsync and atomic rename exist)."""
    fs = getattr(fs, "fs", fs) if isinstance(fs, DirFileSystem) else fs
    p = fs.protocol
    return "file" in ((p,) if isinstance(p, str) else tuple(p))


def _reason(exn: BaseException) -> str:
    return f"{type(exn).__name__}: {exn}"


def read_parquet_file(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    """One manifest file; any unreadable content (0 bytes, garbage, truncated) is an :class:`UnreadableFile`."""
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
        return read_parquet(pa.BufferReader(raw))
    except (OSError, pa.ArrowException) as exn:  # ArrowInvalid: not parquet; OSError: I/O
        raise UnreadableFile(_name(fs, path), f"unreadable manifest ({_reason(exn)})") from exn


def read_json_file(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    """A JSON object file (done marker, run.json); unreadable or not an object -> :class:`UnreadableFile`."""
    try:
        with fs.open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise UnreadableFile(_name(fs, path), f"unreadable JSON ({_reason(exn)})") from exn
    if not isinstance(doc, dict):
        raise UnreadableFile(_name(fs, path), f"JSON is a {type(doc).__name__}, expected an object")
    return doc


def _name(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """How a file is named in messages: its full URL when ``fs`` is a split folder."""
    return fs.url_of(path) if isinstance(fs, SplitDir) else path


# (Schema.empty_table imports pandas: +0.7 s per command)
MANIFEST_EMPTY = pa.Table.from_batches([], schema=schema.MANIFEST_SCHEMA)


class _NoLoop:
    """The event loop of a SplitDir over a synchronous filesystem: there is none (using it is a bug)."""

    def __getattr__(self, name: str):
        raise RuntimeError("a SplitDir over a synchronous filesystem has no event loop")


def is_legacy_manifest(table: pa.Table) -> bool:
    """True for a manifest written before the QC columns (``schema.QC_COLUMNS``) existed."""
    return table.schema.names == list(schema.LEGACY_MANIFEST_COLUMNS)


def conform_manifest(table: pa.Table) -> pa.Table:
    """A manifest table with exactly MANIFEST_SCHEMA: one written before the QC columns gets them as
    nulls; ValueError says why another table does not fit."""
    if is_legacy_manifest(table):
        n = table.num_rows
        for name in schema.QC_COLUMNS:
            col = schema.MANIFEST_SCHEMA.field(name)
            table = table.append_column(col, pa.nulls(n, col.type))
    if table.schema.names != list(schema.MANIFEST_COLUMNS):
        raise ValueError(f"manifest columns {table.schema.names} are not MANIFEST_SCHEMA's")
    if not table.schema.equals(schema.MANIFEST_SCHEMA, check_metadata=False):
        try:
            table = table.cast(schema.MANIFEST_SCHEMA)
        except (pa.ArrowException, ValueError) as exn:
            raise ValueError(f"manifest types differ from MANIFEST_SCHEMA ({_reason(exn)})") from exn
    return table


class SplitDir(DirFileSystem):
    """An ``<out>/<split>`` folder addressed by a local path or any fsspec URL; paths are relative to it."""

    cachable = False  # each SplitDir sees the folder as it is now (no shared instance, no stale listing)

    def __init__(self, url: str):
        fs, root = fsspec.core.url_to_fs(str(url))
        # fsspec reuses filesystem instances, and object-store ones cache listings: a new SplitDir must
        # see the folder as it is now (e.g. verify after a job finished in another process)
        fs.invalidate_cache()
        # DirFileSystem is an async filesystem, whose constructor starts fsspec's event-loop thread; over a
        # synchronous filesystem (local disk) every call it makes is synchronous, so it gets no loop
        loop = None if fs.async_impl else _NoLoop()
        super().__init__(path=root.rstrip("/"), fs=fs, loop=loop)
        self.url = str(url)

    def __repr__(self) -> str:
        return f"SplitDir({self.url!r})"

    # --- names ------------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return is_local_fs(self.fs)

    @property
    def name(self) -> str:
        """The folder's own name (by convention the split's, but a copy may be named anything)."""
        return posixpath.basename(self.path)

    @functools.cached_property
    def split(self) -> str:
        """The split's name as the output records it, not as the folder is named: run.json's config,
        else the shard names of the markers and manifests, else (an empty folder) the folder's name."""
        try:
            conf = (self.run_info() or {}).get(schema.RUN_CONFIG)
        except UnreadableFile:
            conf = None
        if isinstance(conf, dict) and schema.is_safe_id(conf.get(schema.RUN_SPLIT)):
            return conf[schema.RUN_SPLIT]
        for path in [*self.done_files(), *self.manifest_files()]:
            m = schema.SHARD_NAME_RE.match(schema.file_shard(path))
            if m:
                return m["split"]
        return self.name

    def url_of(self, rel: str = "") -> str:
        """Full URL (with protocol) of a path of the split, for messages and readers that open URLs."""
        return self.fs.unstrip_protocol(self._join(rel) if rel else self.path)

    def local_path(self, rel: str) -> str:
        """The operating system's path of a file of a split on the local filesystem (for ``os`` calls)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not on the local filesystem")
        return self._join(rel)

    def files(self, pattern: str) -> list[str]:
        """Sorted relative paths matching a glob (e.g. ``schema.DONE_GLOB``)."""
        return sorted(self.glob(pattern))

    def manifest_files(self) -> list[str]:
        return self.files(schema.MANIFEST_GLOB)

    def done_files(self) -> list[str]:
        return self.files(schema.DONE_GLOB)

    def shard_files(self) -> list[str]:
        return self.files(schema.SHARDS_GLOB)

    def done_shards(self) -> set[str]:
        """Names of the shards that have a done marker (the writer's last step: complete shards)."""
        return {schema.file_shard(p) for p in self.done_files()}

    def complete_shard_files(self) -> list[str]:
        """Shard tars whose done marker exists; an unfinished shard's tar (e.g. left by a killed run
        between its renames) is logged and left out."""
        done = self.done_shards()
        files = self.shard_files()
        keep = [p for p in files if schema.file_shard(p) in done]
        if len(keep) < len(files):
            log.warning("%s: %d shard tar(s) without a done marker left out (unfinished): %s", self.url,
                        len(files) - len(keep), [posixpath.basename(p) for p in files if p not in keep][:5])
        return keep

    # --- reading ----------------------------------------------------------------------------------

    def sample_members(self, key: str, shard: str, offset: int, size: int) -> dict[str, bytes]:
        """Members (ext -> bytes) of one sample, read with one ranged read at its manifest byte range."""
        buf = read_sample_bytes(self, schema.shard_file(shard), offset, size)
        return member_map(parse_member_bytes(buf), key)

    def row_members(self, row: dict) -> dict[str, bytes]:
        """:meth:`sample_members` of an ok manifest row."""
        return self.sample_members(row[Col.KEY], row[Col.SHARD], row[Col.TAR_OFFSET], row[Col.TAR_SIZE])

    def read_json(self, rel: str) -> dict | None:
        """A JSON object file of the split (marker, run.json, lease), or None when there is none; an
        unreadable one raises :class:`UnreadableFile`."""
        if not self.exists(rel):
            return None
        return read_json_file(self, rel)

    def run_info(self) -> dict | None:
        """run.json, or None when there is none; an unreadable one raises :class:`UnreadableFile`."""
        return self.read_json(schema.RUN_JSON)

    def read_manifest(self) -> pa.Table:
        """All manifest rows of the split, in shard order, with MANIFEST_SCHEMA.

        Raises :class:`UnreadableFile` naming the first manifest that cannot be read."""
        table, bad = self.read_manifest_checked()
        if bad:
            raise bad[0]
        return table

    def read_manifest_checked(self) -> tuple[pa.Table, list[UnreadableFile]]:
        """The rows of every readable manifest, and the unreadable ones (never raises for content).

        A parquet file whose columns are not MANIFEST_SCHEMA's counts as unreadable; one written before
        the QC columns existed is read with them null (:func:`conform_manifest`)."""
        tables, bad = [], []
        for p in self.manifest_files():
            try:
                t = read_parquet_file(self, p)
            except UnreadableFile as exn:
                bad.append(exn)
                continue
            try:
                t = conform_manifest(t)
            except ValueError as exn:
                bad.append(UnreadableFile(self.url_of(p), str(exn)))
                continue
            tables.append(t)
        return (pa.concat_tables(tables) if tables else MANIFEST_EMPTY), bad

    # --- writing: every file under the split goes through a temporary name and a rename -----------

    def make_layout(self) -> None:
        """Create the split folder and its sub-folders (shards, manifest, done)."""
        for sub in schema.SUBDIRS:
            self.makedirs(sub, exist_ok=True)

    @contextlib.contextmanager
    def atomic_file(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears at ``rel`` only when the block completes: written under a
        unique temporary name, flushed to disk (fsync, local filesystems), then renamed. On an error
        the temporary file is removed and ``rel`` is untouched.

        Object stores have no atomic rename (fsspec copies then deletes): there the final object
        appears whole but not atomically with respect to a concurrent reader of the temporary name.
        """
        tmp = f"{rel}.{uuid.uuid4().hex[:8]}{schema.TMP_SUFFIX}"
        try:
            with self.open(tmp, "wb") as f:
                yield f
                if self.is_local:
                    f.flush()
                    os.fsync(f.fileno())
            self.mv(tmp, rel)
        except BaseException:
            with contextlib.suppress(OSError):
                if self.exists(tmp):
                    self.rm(tmp)
            raise
        if self.is_local:  # make the rename itself durable
            with contextlib.suppress(OSError):
                fd = os.open(posixpath.dirname(self.local_path(rel)) or ".", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` through :meth:`atomic_file`."""
        with self.atomic_file(rel) as f:
            f.write(data)

    def temp_files(self) -> list[str]:
        """Temporary files left under the split by an interrupted writer (relative paths)."""
        out: list[str] = []
        for sub in ("", *schema.SUBDIRS):
            out += self.glob(posixpath.join(sub, f"*{schema.TMP_SUFFIX}"))
        return sorted(out)


def as_split(d: str | SplitDir) -> SplitDir:
    return d if isinstance(d, SplitDir) else SplitDir(str(d))
