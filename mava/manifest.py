"""Read an MA-V split's manifest (parquet shards behind any fsspec URL) and query it with SQL."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import IO, Iterator

import duckdb
import fsspec
import pyarrow as pa

from mava import schema
from mava.lifecycle import read_parquet
from mava.sample import member_map, parse_member_bytes, read_sample_bytes
from mava.schema import Col

log = logging.getLogger(__name__)

TABLE = "manifest"  # name of the manifest table in SQL queries


class UnreadableFile(ValueError):
    """A file of the split (manifest, done marker, run.json) that cannot be read or parsed; names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (where fsync and atomic rename exist)."""
    p = fs.protocol
    return "file" in ((p,) if isinstance(p, str) else tuple(p))


def _reason(exn: BaseException) -> str:
    return f"{type(exn).__name__}: {exn}"


def read_parquet_file(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    """One manifest file; any unreadable content (0 bytes, garbage, truncated) is an :class:`UnreadableFile`."""
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
        return read_parquet(pa.BufferReader(raw))  # on this thread: no pool work left at exit
    except (OSError, pa.ArrowException) as exn:  # ArrowInvalid: not parquet; OSError: I/O
        raise UnreadableFile(path, f"unreadable manifest ({_reason(exn)})") from exn


def read_json_file(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    """A JSON object file (done marker, run.json); unreadable or not an object -> :class:`UnreadableFile`."""
    try:
        with fs.open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise UnreadableFile(path, f"unreadable JSON ({_reason(exn)})") from exn
    if not isinstance(doc, dict):
        raise UnreadableFile(path, f"JSON is a {type(doc).__name__}, expected an object")
    return doc


@dataclass
class SplitDir:
    """An ``<out>/<split>`` folder addressed by a local path or any fsspec URL."""

    url: str

    @cached_property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.url)
        # fsspec reuses filesystem instances, and object-store ones cache listings: a new SplitDir must
        # see the folder as it is now (e.g. verify after a job finished in another process)
        fs.invalidate_cache()
        return fs, root.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_root[0]

    @property
    def root(self) -> str:
        return self._fs_root[1]

    @property
    def split(self) -> str:
        return posixpath.basename(self.root)

    def path(self, rel: str) -> str:
        """Filesystem path (for ``self.fs``) of a path relative to the split folder."""
        return f"{self.root}/{rel}"

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.fs.glob(self.path(pattern)))

    def shard_path(self, shard: str) -> str:
        """Path of the tar of a shard named e.g. ``sav_train-000003``."""
        return self.path(f"shards/{shard}.tar")

    def shard_url(self, shard: str) -> str:
        """Full URL (with protocol) of a shard tar, for readers that open URLs themselves."""
        return self.fs.unstrip_protocol(self.shard_path(shard))

    def sample_members(self, key: str, shard: str, offset: int, size: int) -> dict[str, bytes]:
        """Members (ext -> bytes) of one sample, read with one ranged read at its manifest byte range."""
        buf = read_sample_bytes(self.fs, self.shard_path(shard), offset, size)
        return member_map(parse_member_bytes(buf), key)

    def row_members(self, row: dict) -> dict[str, bytes]:
        """:meth:`sample_members` of an ok manifest row."""
        return self.sample_members(row[Col.KEY], row[Col.SHARD], row[Col.TAR_OFFSET], row[Col.TAR_SIZE])

    def manifest_files(self) -> list[str]:
        return self.glob(schema.MANIFEST_GLOB)

    def done_files(self) -> list[str]:
        return self.glob(schema.DONE_GLOB)

    def shard_files(self) -> list[str]:
        return self.glob(schema.SHARDS_GLOB)

    def done_shards(self) -> set[str]:
        """Names of the shards that have a done marker (the writer's last step: complete shards)."""
        return {posixpath.basename(p).split(".")[0] for p in self.done_files()}

    def complete_shard_files(self) -> list[str]:
        """Shard tars whose done marker exists; an unfinished shard's tar (e.g. left by a killed run
        between its renames) is logged and left out."""
        done = self.done_shards()
        files = self.shard_files()
        keep = [p for p in files if posixpath.basename(p).split(".")[0] in done]
        if len(keep) < len(files):
            log.warning("%s: %d shard tar(s) without a done marker left out (unfinished): %s", self.url,
                        len(files) - len(keep), [posixpath.basename(p) for p in files if p not in keep][:5])
        return keep

    def read_json(self, rel: str) -> dict | None:
        """A JSON object file of the split (marker, run.json, lease), or None when there is none; an
        unreadable one raises :class:`UnreadableFile`."""
        p = self.path(rel)
        if not self.fs.exists(p):
            return None
        return read_json_file(self.fs, p)

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

        A parquet file whose columns are not MANIFEST_SCHEMA's counts as unreadable."""
        tables, bad = [], []
        for p in self.manifest_files():
            try:
                t = read_parquet_file(self.fs, p)
            except UnreadableFile as exn:
                bad.append(exn)
                continue
            if t.schema.names != list(schema.MANIFEST_COLUMNS):
                bad.append(UnreadableFile(p, f"manifest columns {t.schema.names} are not MANIFEST_SCHEMA's"))
                continue
            if not t.schema.equals(schema.MANIFEST_SCHEMA, check_metadata=False):
                try:
                    t = t.cast(schema.MANIFEST_SCHEMA)
                except (pa.ArrowException, ValueError) as exn:
                    bad.append(UnreadableFile(p, f"manifest types differ from MANIFEST_SCHEMA ({_reason(exn)})"))
                    continue
            tables.append(t)
        return (pa.concat_tables(tables) if tables else MANIFEST_EMPTY), bad

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A duckdb connection where the manifest is the table ``manifest``."""
        con = duckdb.connect()
        con.register(TABLE, self.read_manifest())
        return con

    # --- writing: every file under the split goes through a temporary name and a rename -----------

    @property
    def is_local(self) -> bool:
        return is_local_fs(self.fs)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as f:
            return f.read()

    def makedirs(self) -> None:
        """Create the split folder and its sub-folders (shards, manifest, done)."""
        for sub in schema.SUBDIRS:
            self.fs.makedirs(self.path(sub), exist_ok=True)

    @contextlib.contextmanager
    def atomic_file(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears at ``rel`` only when the block completes: written under a
        unique temporary name, flushed to disk (fsync, local filesystems), then renamed. On an error
        the temporary file is removed and ``rel`` is untouched.

        Object stores have no atomic rename (fsspec copies then deletes): there the final object
        appears whole but not atomically with respect to a concurrent reader of the temporary name.
        """
        final = self.path(rel)
        tmp = f"{final}.{uuid.uuid4().hex[:8]}{schema.TMP_SUFFIX}"
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
                if self.is_local:
                    f.flush()
                    os.fsync(f.fileno())
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            raise
        if self.is_local:  # make the rename itself durable
            with contextlib.suppress(OSError):
                fd = os.open(posixpath.dirname(final) or ".", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` through :meth:`atomic_file`."""
        with self.atomic_file(rel) as f:
            f.write(data)

    def temp_files(self) -> list[str]:
        """Temporary files left under the split by an interrupted writer (paths for ``self.fs``)."""
        out = []
        for sub in ("", *schema.SUBDIRS):
            out += self.fs.glob(self.path(posixpath.join(sub, f"*{schema.TMP_SUFFIX}")))
        return sorted(out)


MANIFEST_EMPTY = schema.MANIFEST_SCHEMA.empty_table()


def as_split(d: str | SplitDir) -> SplitDir:
    return d if isinstance(d, SplitDir) else SplitDir(str(d))


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def query(d: str | SplitDir, sql: str) -> QueryResult:
    """Run SQL over the manifest (table ``manifest``)."""
    con = as_split(d).connect()
    rel = con.sql(sql)
    if rel is None:  # a statement without a result set
        return QueryResult([], [])
    return QueryResult(list(rel.columns), rel.fetchall())


def query_keys(d: str | SplitDir, sql: str) -> list[str]:
    """Keys selected by a query; the query must return a ``key`` column."""
    res = query(d, sql)
    if Col.KEY not in res.columns:
        raise ValueError("the query must select the 'key' column")
    i = res.columns.index(Col.KEY)
    return [r[i] for r in res.rows]


def ok_rows(d: str | SplitDir, keys: set[str] | None = None) -> list[dict]:
    """Manifest rows with status ok (optionally only `keys`), as dicts, in shard then key order."""
    rows = [r for r in as_split(d).read_manifest().to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    if keys is not None:
        rows = [r for r in rows if r[Col.KEY] in keys]
    return sorted(rows, key=lambda r: (r[Col.SHARD], r[Col.KEY]))
