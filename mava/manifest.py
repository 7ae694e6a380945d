"""Read an MA-V split's manifest (parquet shards behind any fsspec URL) and query it with SQL."""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from functools import cached_property

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from mava import schema

log = logging.getLogger(__name__)

TABLE = "manifest"  # name of the manifest table in SQL queries


class UnreadableFile(ValueError):
    """A file of the split (manifest, done marker, run.json) that cannot be read or parsed; names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _reason(exn: BaseException) -> str:
    return f"{type(exn).__name__}: {exn}"


def read_parquet_file(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    """One manifest file; any unreadable content (0 bytes, garbage, truncated) is an :class:`UnreadableFile`."""
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
        return pq.read_table(pa.BufferReader(raw))
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

    def run_info(self) -> dict | None:
        """run.json, or None when there is none; an unreadable one raises :class:`UnreadableFile`."""
        p = self.path(schema.RUN_JSON)
        if not self.fs.exists(p):
            return None
        return read_json_file(self.fs, p)

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
    if "key" not in res.columns:
        raise ValueError("the query must select the 'key' column")
    i = res.columns.index("key")
    return [r[i] for r in res.rows]


def ok_rows(d: str | SplitDir, keys: set[str] | None = None) -> list[dict]:
    """Manifest rows with status ok (optionally only `keys`), as dicts, in shard then key order."""
    rows = [r for r in as_split(d).read_manifest().to_pylist() if r["status"] == schema.STATUS_OK]
    if keys is not None:
        rows = [r for r in rows if r["key"] in keys]
    return sorted(rows, key=lambda r: (r["shard"], r["key"]))
