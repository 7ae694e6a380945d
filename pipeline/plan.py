"""The shard plan: which videos go to which shard, and which shards this run must (re)do."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

from mava import schema
from mava.folder import SplitDir, UnreadableFile, as_split
from mava.lifecycle import read_parquet
from mava.state import read_json_objects
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


class PlanConflict(ValueError):
    """The output holds another shard plan than this run's (one line for the user; exit 2)."""


#: the job config field (run.json ``config``) that fixes the plan, read from outputs without plan.json
CONFIG_VIDEOS_PER_SHARD = "videos_per_shard"


def plan_record(videos_per_shard: int) -> dict:
    """The shard plan as an output records it (plan.json and every done marker): the sorted video list
    cut into consecutive groups of ``videos_per_shard``. The video list itself is input, not plan."""
    return {schema.PLAN_ORDER: schema.PLAN_ORDER_VIDEO_ID, schema.PLAN_VIDEOS_PER_SHARD: int(videos_per_shard)}


def describe_plan(plan: dict) -> str:
    """``--videos-per-shard 2`` (and the order, should it ever be another)."""
    text = f"--videos-per-shard {plan.get(schema.PLAN_VIDEOS_PER_SHARD)}"
    if plan.get(schema.PLAN_ORDER) != schema.PLAN_ORDER_VIDEO_ID:
        text += f", order {plan.get(schema.PLAN_ORDER)!r}"
    return text


def _is_plan(doc: object) -> bool:
    n = doc.get(schema.PLAN_VIDEOS_PER_SHARD) if isinstance(doc, dict) else None
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and schema.PLAN_ORDER in doc


def read_markers(out: str | SplitDir, split: str) -> dict[int, dict | UnreadableFile]:
    """Every done marker of ``split`` in the output by shard index: its object, or why it cannot be read."""
    d = as_split(out)
    paths = {i: p for p in d.done_files()
             if (i := schema.shard_index(schema.file_shard(p), split)) is not None}
    docs = read_json_objects(d, list(paths.values()))  # fetched together (concurrently on object stores)
    return {i: docs[p] for i, p in sorted(paths.items())}


def recorded_plan(out: str | SplitDir, markers: dict[int, dict | UnreadableFile]) -> tuple[dict | None, str]:
    """(the shard plan the output records, where it is recorded): plan.json; for an output without one
    (written before plans were recorded, or plan.json deleted) run.json's config, else the done
    markers' plan; (None, "") when nothing records one. An unreadable plan.json is a PlanConflict."""
    d = as_split(out)
    try:
        rec = d.read_json(schema.PLAN_JSON)
    except UnreadableFile as exc:
        raise PlanConflict(f"{exc}: the output's shard plan cannot be read; rerun with --replan to rewrite the "
                           "output with this run's plan, or use a new --out") from exc
    if rec is not None:
        if not _is_plan(rec):
            raise PlanConflict(f"{d.url_of(schema.PLAN_JSON)} is not a shard plan ({rec!r}); rerun with --replan to "
                               "rewrite the output with this run's plan, or use a new --out")
        return rec, schema.PLAN_JSON
    try:
        conf = (d.run_info() or {}).get(schema.RUN_CONFIG)
    except UnreadableFile:
        conf = None
    n = conf.get(CONFIG_VIDEOS_PER_SHARD) if isinstance(conf, dict) else None
    if _is_plan({schema.PLAN_ORDER: schema.PLAN_ORDER_VIDEO_ID, schema.PLAN_VIDEOS_PER_SHARD: n}):
        return plan_record(n), f"{schema.RUN_JSON}'s config"
    recs = {json.dumps(m[schema.MARKER_PLAN], sort_keys=True): m[schema.MARKER_PLAN] for m in markers.values()
            if isinstance(m, dict) and _is_plan(m.get(schema.MARKER_PLAN))}
    if len(recs) > 1:
        raise PlanConflict(f"the done markers of {d.url} record different shard plans "
                           f"({', '.join(describe_plan(r) for r in recs.values())}): rerun with --replan to rewrite "
                           "the output with this run's plan, or use a new --out")
    if recs:
        return next(iter(recs.values())), "its done markers"
    return None, ""


def remove_shards(out: str | SplitDir) -> int:
    """Remove every shard of the output: done markers first (so no shard looks finished while the rest
    goes), then manifests, then tars. Only under the lease. Returns how many files went."""
    d = as_split(out)
    paths = [*d.done_files(), *d.manifest_files(), *d.shard_files()]
    for p in paths:
        d.rm(p)
    return len(paths)


def settle_plan(out: str | SplitDir, split: str, plans: list[ShardPlan], videos_per_shard: int, *,
                replan: bool = False, shards: set[int] | None = None, limited: bool = False,
                markers: dict[int, dict | UnreadableFile] | None = None) -> dict:
    """Make sure the output holds one shard plan, this run's, before any shard is written (under the lease).

    Returns this run's plan record (it joins every done marker) after recording it in plan.json.
    Raises :class:`PlanConflict`, naming the old and the new plan, when the output records another plan
    (:func:`recorded_plan`), whatever else the run asks for, or done markers of another plan past the
    end of this one (inside it, :func:`check_shard` refuses them shard by shard).
    ``replan`` rewrites instead: every shard of the output is removed (markers first) and the new plan
    recorded, so the output is never half one plan and half the other; with ``shards`` it is refused
    for the same reason. Finished shards past the end of the plan (the split lost videos) are refused
    unless ``limited`` (``--limit-videos``: the rest of the split is not this run's); unfinished shard
    files there (no done marker, left by an interrupted run) are removed. ``markers``: every done marker of
    the output as :func:`read_markers` returns them, when the caller has them already (``ShardFacts``).
    """
    d = as_split(out)
    new = plan_record(videos_per_shard)
    if replan and shards is not None:
        raise PlanConflict("--replan rewrites the whole output, so it cannot be combined with --shards (a partial "
                           "re-plan would leave shards of two plans)")
    markers = read_markers(d, split) if markers is None else markers
    unreadable = None
    try:
        old, source = recorded_plan(d, markers)
    except PlanConflict as exc:
        if not replan:
            raise
        old, source, unreadable = None, "", exc
    foreign = {i: m[schema.MARKER_PLAN] for i, m in markers.items()
               if isinstance(m, dict) and isinstance(m.get(schema.MARKER_PLAN), dict) and m[schema.MARKER_PLAN] != new}
    past = sorted(i for i in markers if i >= len(plans))
    if replan and (unreadable is not None or old != new or foreign or (past and not limited)):
        n = remove_shards(d)  # an unknown old plan (nothing records one) is rewritten too
        if n:
            log.warning("--replan: removed the %d shard files of %s (%s); writing every shard with %s", n, d.url,
                        f"shard plan {describe_plan(old)}" if old else (unreadable or "no recorded shard plan"),
                        describe_plan(new))
        markers = {}
    elif old is not None and old != new:
        raise PlanConflict(f"{d.url} was written with another shard plan ({describe_plan(old)}, recorded in "
                           f"{source}) than this run's ({describe_plan(new)}): rerun with {describe_plan(old)}, or "
                           "add --replan to rewrite the whole output with the new plan (its shards are removed), or "
                           "use a new --out")
    elif any(i >= len(plans) for i in foreign):  # inside the plan, check_shard refuses them one by one
        beyond = sorted(i for i in foreign if i >= len(plans))
        raise PlanConflict(f"{d.url} holds done markers of another shard plan ({describe_plan(foreign[beyond[0]])}, "
                           f"shard{'s' if len(beyond) > 1 else ''} {format_indices(beyond)}) past the end of this "
                           f"run's ({describe_plan(new)}): rerun with --replan to rewrite the whole output with one "
                           "plan, or use a new --out")
    elif replan:
        log.info("--replan: %s already has the plan %s", d.url, describe_plan(new))
    past = sorted(i for i in markers if i >= len(plans))
    if past and not limited:
        raise PlanConflict(f"{d.url} holds finished shards past this plan's {len(plans)} (shards "
                           f"{format_indices(past)}): the split has fewer videos than when they were written; rerun "
                           "with --replan to rewrite the output for the split as it is now, or --limit-videos to "
                           "leave them")
    if not limited:
        leftovers = [p for p in [*d.manifest_files(), *d.shard_files()]
                     if (i := schema.shard_index(schema.file_shard(p), split)) is not None and i >= len(plans)
                     and i not in markers]
        for p in leftovers:
            log.info("removing %s: an unfinished shard past the end of the plan", d.url_of(p))
            d.rm(p)
    if old != new or source != schema.PLAN_JSON:
        d.make_layout()
        d.write_atomic(schema.PLAN_JSON, json.dumps(new, indent=1, sort_keys=True).encode())
    return new


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


@dataclass(frozen=True)
class KnownFingerprint:
    """The parts of a run's fingerprint known before any matter loads: the content options, and the
    matter options every matter fingerprints as configured (``names``; ``options``: their values as
    they join a fingerprint, defaults of ``omit_default`` options absent). Not known yet: the matter's
    name, weights, constants and its ``resolved`` options."""

    content: dict
    options: dict
    names: frozenset

    def changed(self, options: dict) -> list[str]:
        """The options of a matter fingerprint (``options``) that this run configures otherwise."""
        return [k for k in sorted(options) if k in self.names and options[k] != self.options.get(k, "<absent>")]

    def conflicts(self, recorded: dict | None) -> list[str]:
        """The differences, in :func:`fingerprint_diff`'s words, that make ``recorded`` (a done marker's
        fingerprint) another fingerprint than this run's, whichever matter loads; [] when none is known yet.
        Only the options the recorded matter read are compared: one this run changes differs either way
        (the same matter fingerprints it as configured; another matter differs by name)."""
        if not isinstance(recorded, dict):
            return fingerprint_diff(None, {})
        matter = recorded.get(schema.FP_MATTER)
        theirs = matter.get(schema.FP_OPTIONS) if isinstance(matter, dict) else None
        keys = self.changed(theirs) if isinstance(theirs, dict) else []
        old = {schema.FP_MATTER: {schema.FP_OPTIONS: {k: theirs[k] for k in keys}},
               schema.FP_CONTENT: recorded.get(schema.FP_CONTENT, "<absent>")}
        new = {schema.FP_MATTER: {schema.FP_OPTIONS: {k: self.options[k] for k in keys if k in self.options}},
               schema.FP_CONTENT: self.content}
        return fingerprint_diff(old, new)


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

    state: str        # missing | done | grown | other-videos | mismatch | damaged | unreadable
    detail: str = ""
    marker: dict | None = None


#: states of a finished shard that a rerun refuses to mix with its own (redone only with --redo-mismatched)
REFUSED = ("mismatch", "unreadable", "other-videos")


def _sha256(d: SplitDir, rel: str) -> str:
    h = hashlib.sha256()
    with d.open(rel, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ids(videos: list) -> str:
    return str(videos) if len(videos) <= 4 else f"[{', '.join(map(repr, videos[:3]))}, ... {len(videos)} videos]"


@dataclass
class ShardFacts:
    """What the skip check needs of every shard of an output, fetched together: one listing each of
    markers, tars and manifests, then the markers and the manifests read concurrently (on object
    stores; a local disk reads them in turn), in batches. A rerun of thousands of finished shards makes
    a few requests per batch instead of five in turn per shard."""

    markers: dict[int, dict | UnreadableFile] = field(default_factory=dict)   # index -> marker (present only)
    tar_sizes: dict[int, int] = field(default_factory=dict)                 # index -> bytes of its tar
    manifests: dict[int, str | UnreadableFile] = field(default_factory=dict)  # index -> sha256 of its manifest
    failed: dict[int, bool] = field(default_factory=dict)                    # index -> its manifest has failed rows


FETCH_BATCH = 256  # files read at once (bounded memory: manifests are tens of kB each)


def _by_index(paths, split: str) -> dict[int, str]:
    return {i: p for p in paths if (i := schema.shard_index(schema.file_shard(p), split)) is not None}


def _has_failures(data: bytes) -> bool:
    rows = read_parquet(pa.BufferReader(data), columns=[Col.STATUS]).column(Col.STATUS).to_pylist()
    return any(r != schema.STATUS_OK for r in rows)


def gather_shard_facts(out: str | SplitDir, split: str, indices: set[int] | None = None, *,
                       failures: bool = False, batch: int = FETCH_BATCH) -> ShardFacts:
    """:class:`ShardFacts` of the shards of ``split`` in the output (only ``indices`` when given);
    ``failures`` also records whether each manifest holds failed rows (``--retry-failed``)."""
    d = as_split(out)
    facts = ShardFacts()
    keep = (lambda i: True) if indices is None else indices.__contains__
    done = {i: p for i, p in _by_index(d.done_files(), split).items() if keep(i)}
    paths = list(done.values())
    for lo in range(0, len(paths), batch):
        docs = read_json_objects(d, paths[lo:lo + batch])
        facts.markers.update({i: docs[p] for i, p in done.items() if p in docs})
    for p, info in d.glob(schema.SHARDS_GLOB, detail=True).items():
        i = schema.shard_index(schema.file_shard(p), split)
        if i is not None and keep(i):
            facts.tar_sizes[i] = int(info["size"])
    mans = {i: p for i, p in _by_index(d.manifest_files(), split).items() if i in facts.markers}
    items = list(mans.items())
    for lo in range(0, len(items), batch):
        part = items[lo:lo + batch]
        raw = d.cat([p for _, p in part], on_error="return")
        for i, p in part:
            data = raw.get(p)
            if not isinstance(data, bytes):
                facts.manifests[i] = UnreadableFile(d.url_of(p), f"cannot read it ({type(data).__name__}: {data})")
                continue
            facts.manifests[i] = hashlib.sha256(data).hexdigest()
            if failures:
                try:
                    facts.failed[i] = _has_failures(data)
                except (pa.ArrowException, OSError, KeyError) as exc:  # not a manifest: its shard is redone
                    log.warning("%s: unreadable manifest (%s: %s)", d.url_of(p), type(exc).__name__, exc)
                    facts.failed[i] = True
    return facts


def shard_facts(out: str | SplitDir, split: str, index: int) -> ShardFacts:
    """:class:`ShardFacts` of one shard, its files read one by one (no listing): the check of a shard alone."""
    d = as_split(out)
    facts = ShardFacts()
    try:
        marker = d.read_json(schema.shard_done(split, index))
    except UnreadableFile as exc:
        marker = exc
    if marker is None:
        return facts
    facts.markers[index] = marker
    tar, man = schema.shard_tar(split, index), schema.shard_manifest(split, index)
    try:
        if d.exists(tar):
            facts.tar_sizes[index] = d.size(tar)
    except OSError as exc:
        log.warning("%s: cannot stat it (%s)", d.url_of(tar), exc)
    try:
        if d.exists(man):
            facts.manifests[index] = hashlib.sha256(d.read_bytes(man)).hexdigest()
    except OSError as exc:
        facts.manifests[index] = UnreadableFile(d.url_of(man), f"cannot read it ({type(exc).__name__}: {exc})")
    return facts


def check_shard(out: str | SplitDir, split: str, plan: ShardPlan, fingerprint: dict | KnownFingerprint | None,
                verify_tar: bool = False, plan_rec: dict | None = None, limited: bool = False,
                facts: ShardFacts | None = None) -> ShardCheck:
    """Whether a planned shard is provably the shard this run would write.

    ``done`` needs a readable marker of this shard plan (``plan_rec``, when the marker records one) for
    exactly the videos this plan puts in the shard, the same fingerprint, and its tar and manifest as
    the marker describes them (tar size, manifest sha256; with ``verify_tar`` also the tar's sha256).
    A marker for the first videos of the shard only is ``grown`` (the split grew, or a larger
    ``--limit-videos``); one for other videos is ``other-videos`` (the video list changed inside the
    plan, or a foreign marker), except that under ``limited`` a finished shard holding the planned
    videos and more is kept (a ``--limit-videos`` run does not cut finished shards short). ``facts``
    (:func:`gather_shard_facts`): decide from those; without them the shard's files are read one by one
    (:func:`shard_facts`). ``fingerprint`` may be a :class:`KnownFingerprint` (what is known before the
    matters load): a marker that differs from its known parts is a ``mismatch``.
    """
    d = as_split(out)
    if facts is None:
        facts = shard_facts(d, split, plan.index)
    marker = facts.markers.get(plan.index)
    if isinstance(marker, UnreadableFile):
        return ShardCheck("unreadable", f"done marker {marker.path} is unreadable ({marker.reason}): delete it to redo "
                                        f"shard {plan.index}, or rerun with --redo-mismatched")
    if marker is None:
        return ShardCheck("missing")
    theirs = marker.get(schema.MARKER_PLAN)
    if plan_rec is not None and theirs is not None and theirs != plan_rec:
        other = describe_plan(theirs) if isinstance(theirs, dict) else repr(theirs)
        return ShardCheck("mismatch", f"written with another shard plan ({other})", marker)
    videos = [v.video_id for v in plan.videos]
    got = marker.get(schema.MARKER_VIDEOS)
    if not (isinstance(got, list) and got and all(isinstance(v, str) for v in got)):
        return ShardCheck("unreadable", f"done marker {d.url_of(schema.shard_done(split, plan.index))} records no "
                                        f"videos (it is not a done marker of this job): delete it to redo shard "
                                        f"{plan.index}, or rerun with --redo-mismatched", marker)
    if got != videos:
        if got == videos[:len(got)]:
            return ShardCheck("grown", f"written for the first {len(got)} of its {len(videos)} videos", marker)
        if not (limited and videos == got[:len(videos)]):
            return ShardCheck("other-videos", f"written for videos {_ids(got)}, but this plan puts {_ids(videos)} "
                                              "there (the split's video list changed, or the marker comes from "
                                              "another output)", marker)
    recorded = marker.get(schema.MARKER_FINGERPRINT)
    if isinstance(fingerprint, KnownFingerprint):
        diff = fingerprint.conflicts(recorded)
    else:
        diff = fingerprint_diff(recorded, fingerprint) if fingerprint is not None and recorded != fingerprint else []
    if diff:
        return ShardCheck("mismatch", "; ".join(diff), marker)
    return _check_files(d, split, plan.index, marker, facts, verify_tar)


def _check_files(d: SplitDir, split: str, index: int, marker: dict, facts: ShardFacts, verify_tar: bool) -> ShardCheck:
    """The tar and manifest part of :func:`check_shard`, from ``facts``."""
    tar, man = schema.shard_tar(split, index), schema.shard_manifest(split, index)
    size = facts.tar_sizes.get(index)
    if size is None:
        return ShardCheck("damaged", f"{d.url_of(tar)} is missing", marker)
    if size != marker.get(schema.MARKER_TAR_BYTES):
        return ShardCheck("damaged", f"{d.url_of(tar)} has {size} bytes, the marker says "
                                     f"{marker.get(schema.MARKER_TAR_BYTES)}", marker)
    sha = facts.manifests.get(index)
    if sha is None:
        return ShardCheck("damaged", f"{d.url_of(man)} is missing", marker)
    if isinstance(sha, UnreadableFile):
        return ShardCheck("damaged", f"cannot read shard {index}: {sha}", marker)
    if sha != marker.get(schema.MARKER_MANIFEST_SHA256):
        return ShardCheck("damaged", f"{d.url_of(man)} differs from the marker's sha256", marker)
    try:
        if verify_tar and _sha256(d, tar) != marker.get(schema.MARKER_TAR_SHA256):
            return ShardCheck("damaged", f"{d.url_of(tar)} differs from the marker's sha256", marker)
    except OSError as exc:
        return ShardCheck("damaged", f"cannot read shard {index}: {exc}", marker)
    return ShardCheck("done", "", marker)


@dataclass
class Selection:
    """Which shards this run writes and which it keeps; ``mismatched`` finished shards were written
    with another fingerprint or plan, for other videos, or have unreadable markers, and are neither,
    unless redone."""

    run: list[ShardPlan]
    skip: list[ShardPlan]
    mismatched: dict[int, str]


def refused_shards(plans: list[ShardPlan], out: str | SplitDir, split: str, facts: ShardFacts,
                   known: KnownFingerprint, *, plan: dict | None = None, limited: bool = False) -> dict[int, str]:
    """The finished shards a rerun refuses to mix, as far as they can be told before any matter loads
    (another plan, other videos, an unreadable marker, or another ``known`` fingerprint part): index ->
    why. :func:`select_shards` finds these too, and those of another matter, weights or resolved option."""
    refused = {}
    for p in plans:
        check = check_shard(out, split, p, known, False, plan, limited, facts)
        if check.state in REFUSED:
            refused[p.index] = check.detail
    return refused


def select_shards(plans: list[ShardPlan], out: str | SplitDir, split: str, *, fingerprint: dict | None = None,
                  shards: set[int] | None = None, retry_failed: bool = False, redo_mismatched: bool = False,
                  verify_tar: bool = False, plan: dict | None = None, limited: bool = False,
                  facts: ShardFacts | None = None) -> Selection:
    """Decide every planned shard: a shard is kept only when :func:`check_shard` proves it done.

    Missing, damaged or grown shards are (re)done; ``retry_failed`` also redoes done shards with failed
    rows; ``shards`` limits the run to those shards and, without ``retry_failed``, redoes them. A
    finished shard of another fingerprint, another plan or other videos, or with an unreadable marker,
    is redone only with ``redo_mismatched`` (else it is listed in ``mismatched`` and the caller refuses
    to mix). ``plan`` (this run's plan record) and ``limited`` go to :func:`check_shard`. What it reads of
    the output is read together first (:func:`gather_shard_facts`, or ``facts`` when the caller has
    them, gathered with ``failures=retry_failed``): seconds for thousands of shards, also on object storage.
    """
    if shards is not None:
        unknown = sorted(shards - {p.index for p in plans})
        if unknown:
            raise ValueError(f"--shards names shards outside the plan (0-{len(plans) - 1}): {unknown}")
    sel = Selection([], [], {})
    if facts is None:
        facts = gather_shard_facts(out, split, {p.index for p in plans}, failures=retry_failed)
    for p in plans:
        check = check_shard(out, split, p, fingerprint, verify_tar, plan, limited, facts)
        if check.state in REFUSED:
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
            chosen = retry_failed and facts.failed.get(p.index, False)
        (sel.run if chosen else sel.skip).append(p)
    return sel


def clean_partials(out: str | SplitDir) -> int:
    """Remove temporary files left by an interrupted run; return how many."""
    d = as_split(out)
    paths = d.temp_files()
    for path in paths:
        d.rm(path)
    return len(paths)
