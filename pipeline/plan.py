"""The shard plan: which videos go to which shard, and which shards this run must (re)do."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Sequence

from mava import schema
from mava.folder import SplitDir, UnreadableFile, as_split
from mava.lifecycle import read_parquet
from mava.schema import Col

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


class MarkerUnreadable(ValueError):
    """A done marker that exists but cannot be read (names the file and how to fix it)."""


def shard_marker(out: str | SplitDir, split: str, index: int) -> dict | None:
    """The done marker of a shard, or None when the shard is not finished.

    Raises MarkerUnreadable when the marker exists but is not a JSON object.
    """
    try:
        return as_split(out).read_json(schema.shard_done(split, index))
    except UnreadableFile as exc:
        raise MarkerUnreadable(f"done marker {exc.path} is unreadable ({exc.reason}): delete it to redo shard "
                               f"{index}, or rerun with --redo-mismatched") from exc


def fingerprint_diff(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """Readable differences ``field: old -> new`` between two fingerprints (dotted field paths; the
    matter's name and weights first)."""
    if old is None:
        return ["no fingerprint (written by an older version)"]
    out = []
    for k in sorted(set(old) | set(new), key=lambda k: (k not in (schema.FP_MATTER, schema.FP_NAME, schema.FP_WEIGHTS), k)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += fingerprint_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def format_indices(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the --shards syntax)."""
    parts, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@dataclass
class ShardCheck:
    """What a rerun finds of one planned shard."""

    state: str        # missing | done | other-videos | mismatch | damaged | unreadable
    detail: str = ""
    marker: dict | None = None


def _sha256(d: SplitDir, rel: str) -> str:
    h = hashlib.sha256()
    with d.open(rel, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_shard(out: str | SplitDir, split: str, plan: ShardPlan, fingerprint: dict | None,
                verify_tar: bool = False) -> ShardCheck:
    """Whether a planned shard is provably the shard this run would write.

    ``done`` needs a readable marker for the same videos and fingerprint, and its tar and manifest as
    the marker describes them (tar size, manifest sha256; with ``verify_tar`` also the tar's sha256).
    """
    d = as_split(out)
    try:
        marker = shard_marker(d, split, plan.index)
    except MarkerUnreadable as exc:
        return ShardCheck("unreadable", str(exc))
    if marker is None:
        return ShardCheck("missing")
    videos = [v.video_id for v in plan.videos]
    if marker.get(schema.MARKER_VIDEOS) != videos:
        return ShardCheck("other-videos", f"written for videos {marker.get(schema.MARKER_VIDEOS)}", marker)
    if fingerprint is not None and marker.get(schema.MARKER_FINGERPRINT) != fingerprint:
        diff = fingerprint_diff(marker.get(schema.MARKER_FINGERPRINT), fingerprint)
        return ShardCheck("mismatch", "; ".join(diff), marker)
    tar, man = schema.shard_tar(split, plan.index), schema.shard_manifest(split, plan.index)
    try:
        if not d.exists(tar):
            return ShardCheck("damaged", f"{d.url_of(tar)} is missing", marker)
        if d.size(tar) != marker.get(schema.MARKER_TAR_BYTES):
            return ShardCheck("damaged", f"{d.url_of(tar)} has {d.size(tar)} bytes, the marker says "
                                         f"{marker.get(schema.MARKER_TAR_BYTES)}", marker)
        if not d.exists(man):
            return ShardCheck("damaged", f"{d.url_of(man)} is missing", marker)
        if hashlib.sha256(d.read_bytes(man)).hexdigest() != marker.get(schema.MARKER_MANIFEST_SHA256):
            return ShardCheck("damaged", f"{d.url_of(man)} differs from the marker's sha256", marker)
        if verify_tar and _sha256(d, tar) != marker.get(schema.MARKER_TAR_SHA256):
            return ShardCheck("damaged", f"{d.url_of(tar)} differs from the marker's sha256", marker)
    except OSError as exc:
        return ShardCheck("damaged", f"cannot read shard {plan.index}: {exc}", marker)
    return ShardCheck("done", "", marker)


def stale_shards(out: str | SplitDir, split: str, num_shards: int) -> list[str]:
    """Done markers of shards past the end of the plan (left by a run with another shard plan)."""
    stale = []
    for path in as_split(out).done_files():
        name = schema.file_shard(path)
        index = schema.shard_index(name, split)
        if index is not None and index >= num_shards:
            stale.append(name)
    return sorted(stale)


def shard_failures(out: str | SplitDir, split: str, index: int) -> list[str]:
    """Error types of the failed rows in a shard's manifest ([] when it has none or no manifest)."""
    d = as_split(out)
    rel = schema.shard_manifest(split, index)
    if not d.exists(rel):
        return []
    with d.open(rel, "rb") as f:
        rows = read_parquet(f, columns=[Col.STATUS, Col.ERROR_TYPE]).to_pylist()
    return [r[Col.ERROR_TYPE] for r in rows if r[Col.STATUS] != schema.STATUS_OK]


@dataclass
class Selection:
    """Which shards this run writes and which it keeps; ``mismatched`` finished shards were written
    with another fingerprint (or have unreadable markers) and are neither, unless redone."""

    run: list[ShardPlan]
    skip: list[ShardPlan]
    mismatched: dict[int, str]


def select_shards(plans: list[ShardPlan], out: str | SplitDir, split: str, *, fingerprint: dict | None = None,
                  shards: set[int] | None = None, retry_failed: bool = False, redo_mismatched: bool = False,
                  verify_tar: bool = False) -> Selection:
    """Decide every planned shard: a shard is kept only when :func:`check_shard` proves it done.

    Missing, damaged or other-videos shards are (re)done; ``retry_failed`` also redoes done shards
    with failed rows; ``shards`` limits the run to those shards and, without ``retry_failed``, redoes
    them. A shard of another fingerprint is redone only with ``redo_mismatched`` (else it is listed in
    ``mismatched`` and the caller refuses to mix).
    """
    if shards is not None:
        unknown = sorted(shards - {p.index for p in plans})
        if unknown:
            raise ValueError(f"--shards names shards outside the plan (0-{len(plans) - 1}): {unknown}")
    sel = Selection([], [], {})
    for p in plans:
        check = check_shard(out, split, p, fingerprint, verify_tar)
        if check.state in ("mismatch", "unreadable"):
            if redo_mismatched:
                log.warning("shard %d: %s: redoing it (--redo-mismatched)", p.index, check.detail)
                sel.run.append(p)
            else:
                sel.mismatched[p.index] = check.detail
            continue
        if shards is not None and p.index not in shards:
            chosen = False
        elif shards is not None and not retry_failed:
            chosen = True  # explicitly named: redo
        elif check.state != "done":
            if check.state != "missing":
                log.warning("shard %d is %s (%s): redoing it", p.index, check.state, check.detail)
            chosen = True
        else:
            chosen = retry_failed and bool(shard_failures(out, split, p.index))
        (sel.run if chosen else sel.skip).append(p)
    return sel


def clean_partials(out: str | SplitDir) -> int:
    """Remove temporary files left by an interrupted run; return how many."""
    d = as_split(out)
    paths = d.temp_files()
    for path in paths:
        d.rm(path)
    return len(paths)
