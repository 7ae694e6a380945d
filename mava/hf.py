"""MA-V through Hugging Face ``datasets``: the columns its ``webdataset`` builder gives, and a loader.

The builder splits each tar member name at the first dot, like WebDataset: ``<key>.alpha.03.png`` is
column ``alpha.03.png`` of row ``<key>`` (decoded as an image because the name ends in ``.png``),
``<key>.json`` is column ``json``. Without given features it infers the columns from the first five
samples and refuses shards whose samples have different member sets, which MA-V's do: a segment
shorter than the segment length has fewer ``alpha.NN.png`` members. So the features are given
(here, or in the dataset card's ``dataset_info``): one image column per frame position up to the
longest sample, absent members are None. No member name has to change for this.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mava import schema
from mava.schema import Col
from mava.folder import SplitDir

DEFAULT_MAX_FRAMES = 12


def _table(split_or_table: str | SplitDir | pa.Table) -> pa.Table:
    """The manifest rows to look at: a given table, or the rows a split's finished shards vouch for."""
    if isinstance(split_or_table, pa.Table):
        return split_or_table
    from mava.state import inspect_split, vouched_manifest

    return vouched_manifest(inspect_split(split_or_table, need_finished=True)).table


def max_frames(split_or_table: str | SplitDir | pa.Table) -> int:
    """The longest sample of the split (frame positions the features must cover)."""
    n = [v for v in _table(split_or_table).column(Col.NUM_FRAMES).to_pylist() if v is not None]
    return max(n) if n else DEFAULT_MAX_FRAMES


def has_frames(split_or_table: str | SplitDir | pa.Table) -> bool:
    """True when the split's samples carry frame JPEGs (not written with ``--frames none``)."""
    rows = _table(split_or_table).select([Col.STATUS, Col.NUM_FRAMES, Col.NUM_MEMBERS]).to_pylist()
    return any(r[Col.STATUS] == schema.STATUS_OK and r[Col.NUM_MEMBERS] == 1 + 2 * (r[Col.NUM_FRAMES] or 0)
               for r in rows)


def columns(max_frames: int, frames: bool = True) -> list[tuple[str, str]]:
    """(column, dtype) of a row in tar member order; dtype as the dataset card's YAML names it."""
    cols = [(schema.HF_KEY_COLUMN, "string"), (schema.HF_URL_COLUMN, "string"), (schema.META_EXT, "json")]
    for i in range(max_frames):
        if frames:
            cols.append((schema.frame_ext(i), "image"))
        cols.append((schema.alpha_ext(i), "image"))
    return cols


def features(max_frames: int, frames: bool = True):
    """``datasets.Features`` of an MA-V row: key, shard URL, metadata (Json), frame and alpha images."""
    import datasets

    kinds = {"string": lambda: datasets.Value("string"), "json": datasets.Json, "image": datasets.Image}
    return datasets.Features({name: kinds[dtype]() for name, dtype in columns(max_frames, frames)})


def data_files(split_dir: str | SplitDir) -> list[str]:
    """URLs of the tars of the split's finished shards (a readable done marker); raises
    :class:`~mava.state.NotASplit` for a path that is not a split or has no finished shard."""
    from mava.state import inspect_split

    st = inspect_split(split_dir, need_finished=True)
    return [st.dir.url_of(schema.shard_file(s)) for s in st.finished]


def load(split_dir: str | SplitDir, streaming: bool = False, subset: str | None = None, **kwargs: Any):
    """``datasets.load_dataset("webdataset", ...)`` over a split's finished shards with the MA-V
    features: a ``Dataset`` (or ``IterableDataset`` when streaming), one row per sample. `subset`: only the
    samples of that named view (``mava filter``; shards without any are not read). `kwargs` go to
    ``load_dataset`` (e.g. ``cache_dir``, ``storage_options``). (``datasets`` reads the tars as they
    are: :mod:`mava.loaders` also checks each sample against the manifest.)"""
    import datasets

    from mava.state import inspect_split, vouched_manifest

    st = inspect_split(split_dir, need_finished=True)
    table = vouched_manifest(st).table
    shards = list(st.finished)
    keys = None
    if subset is not None:
        from mava.views import subset_keys

        keys = subset_keys(st.dir, subset)
        shards = sorted({r[Col.SHARD] for r in table.select([Col.KEY, Col.SHARD]).to_pylist() if r[Col.KEY] in keys})
        if not shards:
            raise FileNotFoundError(f"no finished shard of {st.dir.url} holds samples of view {subset!r}")
    files = [st.dir.url_of(schema.shard_file(s)) for s in shards]
    feats = features(max_frames(table), has_frames(table))
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", features=feats,
                               streaming=streaming, **kwargs)
    return ds if keys is None else ds.filter(lambda key: key in keys, input_columns=[schema.HF_KEY_COLUMN])


def row_arrays(row: dict) -> dict:
    """A ``datasets`` row as arrays: key, meta, alpha uint8[T,H,W], frames uint8[T,H,W,3] (or None)."""
    meta = row[schema.META_EXT]
    t = int(meta[Col.NUM_FRAMES])
    alpha = np.stack([np.asarray(row[schema.alpha_ext(i)]) for i in range(t)])
    frames = None
    if row.get(schema.frame_ext(0)) is not None:
        frames = np.stack([np.asarray(row[schema.frame_ext(i)].convert("RGB")) for i in range(t)])
    return {"key": row[schema.HF_KEY_COLUMN], "meta": meta, "alpha": alpha, "frames": frames}
