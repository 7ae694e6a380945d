"""The shard plan: which videos go to which shard, and which shards this run must (re)do."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Sequence

import pyarrow.parquet as pq

from mava import schema
from mava.manifest import SplitDir, as_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    """One shard: its index and the videos (in sorted order) it covers."""

    index: int
    videos: tuple  # VideoRef, kept opaque here


def plan_shards(videos: Sequence, videos_per_shard: int) -> list[ShardPlan]:
    """Consecutive groups of ``videos_per_shard`` from the sorted video list; deterministic."""
    if videos_per_shard < 1:
        raise ValueError("videos_per_shard must be >= 1")
    ordered = sorted(videos, key=lambda v: v.video_id)
    return [ShardPlan(i // videos_per_shard, tuple(ordered[i:i + videos_per_shard]))
            for i in range(0, len(ordered), videos_per_shard)]


def parse_shard_spec(spec: str) -> set[int]:
    """``"3,7-9"`` -> {3, 7, 8, 9}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad shard spec {part!r}: use N or N-M, comma separated") from None
        if a < 0 or b < a:
            raise ValueError(f"bad shard range {part!r}")
        out.update(range(a, b + 1))
    return out


def shard_marker(out: str | SplitDir, split: str, index: int) -> dict | None:
    """The done marker of a shard, or None when the shard is not finished."""
    d = as_split(out)
    rel = schema.shard_done(split, index)
    if not d.exists(rel):
        return None
    return json.loads(d.read_bytes(rel))


def shard_is_done(out: str | SplitDir, split: str, plan: ShardPlan, options: dict | None = None) -> bool:
    """Finished, for the same videos and content options. A shard written from another video list
    (e.g. a run with --limit-videos that cut it short) or with other options is not done."""
    marker = shard_marker(out, split, plan.index)
    if marker is None:
        return False
    videos = [v.video_id for v in plan.videos]
    if marker.get(schema.MARKER_VIDEOS, videos) != videos:
        log.warning("shard %d was written for other videos than this plan's: redoing it", plan.index)
        return False
    if options is not None and marker.get(schema.MARKER_OPTIONS, options) != options:
        log.warning("shard %d was written with %s, this run uses %s: redoing it", plan.index,
                    marker.get(schema.MARKER_OPTIONS), options)
        return False
    return True


def stale_shards(out: str | SplitDir, split: str, num_shards: int) -> list[str]:
    """Done markers of shards past the end of the plan (left by a run with another shard plan)."""
    stale = []
    for path in as_split(out).done_files():
        name = path.rsplit("/", 1)[-1]
        index = schema.shard_index(name.rsplit(".", 1)[0], split)
        if index is not None and index >= num_shards:
            stale.append(name)
    return sorted(stale)


def shard_failures(out: str | SplitDir, split: str, index: int) -> list[str]:
    """Error types of the failed rows in a shard's manifest ([] when it has none or no manifest)."""
    d = as_split(out)
    rel = schema.shard_manifest(split, index)
    if not d.exists(rel):
        return []
    with d.fs.open(d.path(rel), "rb") as f:
        rows = pq.read_table(f, columns=["status", "error_type"]).to_pylist()
    return [r["error_type"] for r in rows if r["status"] != schema.STATUS_OK]


def select_shards(plans: list[ShardPlan], out: str | SplitDir, split: str, *, shards: set[int] | None = None,
                  retry_failed: bool = False, options: dict | None = None
                  ) -> tuple[list[ShardPlan], list[ShardPlan]]:
    """Split ``plans`` into (to run, skipped).

    A shard with a done marker is skipped unless ``retry_failed`` is set and its manifest has failed
    rows. ``shards`` limits the run to those shards and, without ``retry_failed``, redoes them.
    """
    if shards is not None:
        unknown = sorted(shards - {p.index for p in plans})
        if unknown:
            raise ValueError(f"--shards names shards outside the plan (0-{len(plans) - 1}): {unknown}")
    run, skip = [], []
    for p in plans:
        if shards is not None and p.index not in shards:
            chosen = False
        elif shards is not None and not retry_failed:
            chosen = True  # explicitly named: redo
        elif not shard_is_done(out, split, p, options):
            chosen = True
        else:
            chosen = retry_failed and bool(shard_failures(out, split, p.index))
        (run if chosen else skip).append(p)
    return run, skip


def clean_partials(out: str | SplitDir) -> int:
    """Remove temporary files left by an interrupted run; return how many."""
    d = as_split(out)
    paths = d.temp_files()
    for path in paths:
        d.fs.rm(path)
    return len(paths)
