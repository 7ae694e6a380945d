"""Read an MA-V split's manifest (parquet shards behind any fsspec URL) and query it with SQL."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from functools import cached_property

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from mava import schema

TABLE = "manifest"  # name of the manifest table in SQL queries


@dataclass
class SplitDir:
    """An ``<out>/<split>`` folder addressed by a local path or any fsspec URL."""

    url: str

    @cached_property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.url)
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

    def run_info(self) -> dict | None:
        p = self.path(schema.RUN_JSON)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "rb") as f:
            return json.load(f)

    def read_manifest(self) -> pa.Table:
        """All manifest rows of the split, in shard order, with MANIFEST_SCHEMA."""
        files = self.manifest_files()
        if not files:
            return MANIFEST_EMPTY
        tables = []
        for p in files:
            with self.fs.open(p, "rb") as f:
                tables.append(pq.read_table(f))
        return pa.concat_tables(tables, promote_options="default")

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
