"""Named views of a split: curated subsets recorded as keys plus the predicate that chose them, under
``<split>/views/<name>.parquet``; shards and manifests are never rewritten.

- :func:`filter_view` (``python -m mava filter SPLIT --where "qc = 'pass' and leak < 0.02" --name clean``)
  records the keys of the ok rows a SQL predicate selects, with the predicate, where the verdicts came
  from and their thresholds; the loaders (``subset="clean"``), :func:`mava.hf.load` and ``mava export``
  read it back with :func:`subset_keys`.
- The *verdict view* (``views/qc.parquet``, :func:`write_verdicts`, ``mava qc --recompute``) holds
  verdicts recomputed from the stored scores with other thresholds and, for output written before the
  scores existed, scores computed from the samples themselves (``mava qc --from-tar``).
  :func:`qc_table` is the manifest with that view laid over it: what ``mava qc`` and ``mava filter`` read.

A view file is a parquet table with a ``key`` column (the verdict view: also score and verdict columns)
and its definition as JSON in the schema metadata (``schema.VIEW_META``).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mava import lifecycle, qc, schema
from mava.folder import SplitDir, as_split
from mava.schema import Col

log = logging.getLogger(__name__)


class ViewError(ValueError):
    """A view that cannot be made or found (one line for the user)."""


@dataclass
class View:
    name: str
    definition: dict
    table: pa.Table     # ``key`` (+ the verdict view's score and verdict columns)

    @property
    def keys(self) -> list[str]:
        return self.table.column(Col.KEY).to_pylist()


def list_views(split_dir: str | SplitDir) -> list[str]:
    """Names of the split's views (the verdict view included), sorted."""
    return sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in as_split(split_dir).files(schema.VIEWS_GLOB))


def write_view(split_dir: str | SplitDir, name: str, table: pa.Table, definition: dict) -> str:
    """Write a view (atomically); returns its URL."""
    split = as_split(split_dir)
    rel = schema.view_file(name)
    meta = {schema.VIEW_NAME: name, schema.VIEW_ROWS: table.num_rows,
            schema.VIEW_CREATED_AT: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **definition}
    table = table.replace_schema_metadata({schema.VIEW_META: json.dumps(meta, sort_keys=True).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    split.makedirs(schema.VIEWS_DIR, exist_ok=True)
    split.write_atomic(rel, sink.getvalue())
    return split.url_of(rel)


def read_view(split_dir: str | SplitDir, name: str) -> View:
    """A view by name; ViewError names the views there are when it does not exist or cannot be read."""
    split = as_split(split_dir)
    try:
        rel = schema.view_file(name)
    except ValueError as exn:
        raise ViewError(str(exn)) from None
    if not split.exists(rel):
        have = list_views(split)
        raise ViewError(f"no view {name!r} in {split.url} (views: {', '.join(have) if have else 'none'}; "
                        "`python -m mava filter` records one)")
    try:
        t = lifecycle.read_parquet(pa.BufferReader(split.read_bytes(rel)))
        meta = json.loads((t.schema.metadata or {}).get(schema.VIEW_META, b"{}"))
    except (OSError, pa.ArrowException, json.JSONDecodeError) as exn:
        raise ViewError(f"view {split.url_of(rel)} is unreadable ({type(exn).__name__}: {exn})") from exn
    if Col.KEY not in t.column_names:
        raise ViewError(f"view {split.url_of(rel)} has no {Col.KEY!r} column")
    return View(name, meta, t.replace_schema_metadata(None))


def subset_keys(split_dir: str | SplitDir, name: str) -> set[str]:
    """The keys of a named view (what ``subset=name`` selects)."""
    return set(read_view(split_dir, name).keys)


# --- the verdict view and the QC table --------------------------------------------------------------


def verdict_view(split_dir: str | SplitDir) -> View | None:
    split = as_split(split_dir)
    return read_view(split, schema.VERDICT_VIEW) if split.exists(schema.view_file(schema.VERDICT_VIEW)) else None


def qc_table(split_dir: str | SplitDir) -> tuple[pa.Table, dict]:
    """(the manifest with the verdict view's columns laid over its rows, the view's definition or {}).

    Where the view has a value for a row it wins (recomputed verdicts; scores computed from the tar)."""
    split = as_split(split_dir)
    t = split.read_manifest()
    view = verdict_view(split)
    if view is None:
        return t, {}
    over = {r[Col.KEY]: r for r in view.table.to_pylist()}
    cols = [c for c in view.table.column_names if c != Col.KEY and c in schema.QC_COLUMNS]
    keys = t.column(Col.KEY).to_pylist()
    for c in cols:
        old = t.column(c).to_pylist()
        new = [over[k][c] if k in over and over[k][c] is not None else v for k, v in zip(keys, old)]
        t = t.set_column(t.schema.get_field_index(c), schema.MANIFEST_SCHEMA.field(c),
                         pa.array(new, schema.MANIFEST_SCHEMA.field(c).type))
    return t, view.definition


def missing_scores(t: pa.Table) -> int:
    """Ok rows without any sample score (written before QC existed, or not yet computed from the tar)."""
    rows = t.select([Col.STATUS, *qc.SAMPLE_SCORES]).to_pylist()
    return sum(r[Col.STATUS] == schema.STATUS_OK and all(r[s] is None for s in qc.SAMPLE_SCORES) for r in rows)


def scores_from_tar(split_dir: str | SplitDir, only_missing: bool = True, progress: bool = False) -> dict[str, dict]:
    """Every QC score of the ok rows (only those without scores, by default, and their masklets'
    neighbours), computed from the samples in the shards: key -> scores."""
    split = as_split(split_dir)
    t = split.read_manifest()
    rows = [r for r in t.to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    groups = qc.masklet_groups(rows)
    if only_missing:
        groups = {k: g for k, g in groups.items() if any(all(r[s] is None for s in qc.SAMPLE_SCORES) for r in g)}
    out: dict[str, dict] = {}
    for group in tqdm(groups.values(), desc="scores from tar", disable=not progress):
        sample: dict[str, dict] = {}

        def windows(group=group):
            for r in group:
                w = qc.window_of(r[Col.KEY], split.row_members(r))
                sample[w.key] = qc.sample_scores(w.alpha, w.masks)
                yield w

        cross = qc.window_scores(windows())
        for key, scores in sample.items():
            out[key] = scores | cross[key]
    return out


def write_verdicts(split_dir: str | SplitDir, th: qc.Thresholds, from_tar: bool = False,
                   progress: bool = False) -> tuple[str, pa.Table]:
    """Recompute every ok row's verdict with ``th`` from the stored scores (with ``from_tar``, scores
    missing from the manifest are computed from the samples first) and write the verdict view; the
    manifests are untouched. Returns the view's URL and the QC table as the view makes it."""
    split = as_split(split_dir)
    base = split.read_manifest()
    computed = scores_from_tar(split, progress=progress) if from_tar else {}
    old = verdict_view(split)
    if old is not None and not from_tar:  # keep scores an earlier --from-tar computed
        for r in old.table.to_pylist():
            if r[Col.KEY] not in computed and any(r.get(s) is not None for s in qc.SCORES):
                computed[r[Col.KEY]] = {s: r.get(s) for s in qc.SCORES}
    keys, rows = [], []
    for r in base.to_pylist():
        if r[Col.STATUS] != schema.STATUS_OK:
            continue
        scores = {s: r[s] for s in qc.SCORES} | {k: v for k, v in computed.get(r[Col.KEY], {}).items() if v is not None}
        keys.append(r[Col.KEY])
        rows.append(scores | qc.verdict_columns(scores | {Col.STATUS: r[Col.STATUS]}, th))
    fields = [schema.MANIFEST_SCHEMA.field(Col.KEY)] + [schema.MANIFEST_SCHEMA.field(c) for c in schema.QC_COLUMNS]
    table = pa.table({Col.KEY: keys, **{c: [r.get(c) for r in rows] for c in schema.QC_COLUMNS}},
                     schema=pa.schema(fields))
    url = write_view(split, schema.VERDICT_VIEW, table, {
        schema.VIEW_THRESHOLDS: th.as_dict(), schema.VIEW_SCORES_FROM: "manifest+tar" if computed else "manifest"})
    return url, qc_table(split)[0]


# --- named subsets ----------------------------------------------------------------------------------


def select_keys(table: pa.Table, where: str) -> list[str]:
    """Keys of the ok rows of a QC table that satisfy the SQL predicate ``where`` (table ``manifest``)."""
    con = duckdb.connect()
    con.register("manifest", table)
    try:
        rel = con.sql(f"select {Col.KEY} from manifest where {Col.STATUS} = '{schema.STATUS_OK}' and ({where}) "
                      f"order by {Col.KEY}")
        return [r[0] for r in rel.fetchall()]
    except duckdb.Error as exn:
        raise ViewError(f"bad predicate {where!r}: {str(exn).splitlines()[0]}") from None


def filter_view(split_dir: str | SplitDir, where: str, name: str) -> tuple[str, View]:
    """Record the ok rows that satisfy ``where`` as the view ``name`` (keys + predicate + the thresholds
    of the verdicts it saw); returns its URL and the view."""
    if name == schema.VERDICT_VIEW:
        raise ViewError(f"{name!r} is the verdict view's name (`mava qc --recompute` writes it); choose another")
    try:
        schema.view_file(name)
    except ValueError as exn:
        raise ViewError(str(exn)) from None
    split = as_split(split_dir)
    table, verdicts = qc_table(split)
    keys = select_keys(table, where)
    definition = {schema.VIEW_WHERE: where,
                  schema.VIEW_VERDICTS: "view" if verdicts else "manifest",
                  schema.VIEW_THRESHOLDS: verdicts.get(schema.VIEW_THRESHOLDS, qc.Thresholds().as_dict())}
    t = pa.table({Col.KEY: pa.array(keys, pa.string())})
    url = write_view(split, name, t, definition)
    return url, read_view(split, name)
