"""Query an MA-V split's manifest (parquet shards behind any fsspec URL) with SQL."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb

from mava import schema
from mava.folder import SplitDir, as_split
from mava.schema import Col

log = logging.getLogger(__name__)

TABLE = "manifest"  # name of the manifest table in SQL queries


def connect(d: str | SplitDir) -> duckdb.DuckDBPyConnection:
    """A duckdb connection where the manifest is the table ``manifest``."""
    con = duckdb.connect()
    con.register(TABLE, as_split(d).read_manifest())
    return con


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def query(d: str | SplitDir, sql: str) -> QueryResult:
    """Run SQL over the manifest (table ``manifest``)."""
    con = connect(d)
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
