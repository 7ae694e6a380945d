"""The MA-V job: plan the shards of a split, decide which to (re)do, and run them with the executor.

Data flow (modules in order): ``reader`` (SA-V video -> segments) -> ``matter_actor`` (segments ->
mattes) -> ``writer`` (encode, stream into shards); ``plan`` decides the shards, ``executor`` runs the
steps on Ray, ``run`` is the command line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import logging
import uuid
from dataclasses import dataclass, field

from mava import schema
from mava.folder import SplitDir
from models.base import MatterConfig, available_matters, configured_fields, fingerprint_options
from models.options import fraction, int_at_least, number_at_least, option
from pipeline import plan as planning
from pipeline import sav
from pipeline.executor import ClusterError, Executor, ResourceConfig, ShardTask, init_ray
from pipeline.lease import Lease, LeaseHeld
from pipeline.matter_actor import MatterActor
from pipeline.protocol import Steps
from pipeline.reader import ReaderConfig, list_videos, lost_keys, read_video
from pipeline.writer import ShardWriter
from pipeline.encode import encode

log = logging.getLogger(__name__)


class JobError(ValueError):
    """The job cannot start or must not go on as asked (one line for the user; exit code 2)."""


def _shard_spec(text: str) -> set[int]:
    """``--shards`` value: "3,7-9"."""
    try:
        shards = planning.parse_shard_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not shards:
        raise argparse.ArgumentTypeError(f"{text!r} names no shard")
    return shards


@dataclass
class JobConfig:
    """One run of the job; each plain field is a ``python -m pipeline.run`` flag (see models.options)."""

    split: str = option(dataclasses.MISSING, "split folder name under --data-root, e.g. sav_train", group="io")
    data_root: str = option("data", "SA-V root: local path or fsspec URL", group="io")
    out: str = option("out/mava", "output root (path or fsspec URL); writes <out>/<split>/", group="io")
    matter: str = option("videomama", f"matter name ({', '.join(available_matters())}) or 'module:Factory'",
                         group="matter")
    matter_config: MatterConfig = field(default_factory=MatterConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    frames: str = option("jpg", "also store the RGB frames of each segment as JPEG (needed for training)",
                         choices=("jpg", "none"), group="io")
    videos_per_shard: int = option(8, "videos per shard (fixes the shard plan)", parse=int_at_least(1),
                                   group="shards")
    shards: set[int] | None = option(None, "only these shards of the plan, e.g. '3,7-9' (redone)",
                                     parse=_shard_spec, group="shards")
    retry_failed: bool = option(False, "redo finished shards whose manifest has failed rows (and unfinished ones)",
                                group="shards")
    redo_mismatched: bool = option(False, "redo finished shards written with another fingerprint (matter, weights "
                                          "or an output-changing option) or with unreadable done markers; without "
                                          "it such a rerun refuses (exit 2) instead of mixing", group="shards")
    replan: bool = option(False, "rewrite an output written with another shard plan (--videos-per-shard): every "
                                 "shard of the old plan is removed and the whole split is written with this one "
                                 "(not with --shards)", group="shards")
    verify_skipped: bool = option(False, "before skipping a finished shard, also check its tar's sha256 against "
                                         "the done marker (always checked: the tar's size and the manifest's "
                                         "sha256)", group="shards")
    max_matter_failures: float = option(0.5, "a shard where the matter fails on more than this fraction of the "
                                             "samples it was given is not marked done and fails the run (a guard "
                                             "against unrecognised system errors)", parse=fraction, group="shards")
    lease_timeout_s: float = option(300.0, "seconds without heartbeat after which another run's lease on the "
                                           "output is stale and taken over", parse=number_at_least(1),
                                    flag="--lease-timeout", group="shards")
    limit_videos: int | None = option(None, "use only the first N videos of the split", parse=int_at_least(1),
                                      group="shards")
    progress: bool = option(True, "no progress bar", flag="--no-progress")

    def __post_init__(self):
        # the segment length has one source, the reader's: the matter pads short segments to it
        if self.matter_config.segment_len != self.reader.segment_len:
            self.matter_config = dataclasses.replace(self.matter_config, segment_len=self.reader.segment_len)

    @property
    def split_url(self) -> str:
        return f"{self.data_root.rstrip('/')}/{self.split}"

    @property
    def out_split(self) -> str:
        return f"{self.out.rstrip('/')}/{self.split}"

    def content_options(self) -> dict:
        """Job options that change what a shard holds besides the matter: the reader's output options
        (see ReaderConfig's field classification) and whether frames are stored."""
        return {**fingerprint_options(self.reader), "frames": self.frames}

    def known_fingerprint(self) -> planning.KnownFingerprint:
        """What this run's fingerprint holds before any matter loads (see :class:`planning.KnownFingerprint`)."""
        names = configured_fields()
        return planning.KnownFingerprint(self.content_options(), fingerprint_options(self.matter_config, names),
                                         frozenset(names))


@dataclass
class JobResult:
    shards_done: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    shards_failed: dict[int, str] = field(default_factory=dict)
    shards_redone: dict[int, int] = field(default_factory=dict)    # shards redone in this run after a loss
    ok: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    frames: int = 0
    wall_s: float = 0.0
    actors: list[dict] = field(default_factory=list)
    fingerprint: dict | None = None
    errors: list[str] = field(default_factory=list)   # run-level problems (exit 1)

    @property
    def exit_code(self) -> int:
        return 1 if self.shards_failed or self.errors else 0

    def utilisation(self, warm: bool = False) -> float | None:
        """Fraction of the actors' time (from their first call) spent in the matter, not waiting."""
        first = sum(a["stats"].get("first_call_s", 0.0) for a in self.actors) if warm else 0.0
        busy = sum(a["stats"]["busy_s"] for a in self.actors) - first
        span = busy + sum(a["stats"]["idle_s"] for a in self.actors)
        return round(busy / span, 4) if span > 0 else None

    def summary(self) -> dict:
        return {
            "shards_done": len(self.shards_done), "shards_skipped": len(self.shards_skipped),
            "shards_failed": {str(k): v for k, v in self.shards_failed.items()},
            "shards_redone": {str(k): v for k, v in self.shards_redone.items()},
            "samples_ok": self.ok, "samples_failed": dict(sorted(self.failed.items())),
            "frames": self.frames, "wall_s": round(self.wall_s, 2),
            "frames_per_s": round(self.frames / self.wall_s, 2) if self.wall_s else None,
            "actor_utilisation": self.utilisation(),
            "actor_utilisation_warm": self.utilisation(warm=True),
        }


def steps_for(cfg: JobConfig) -> Steps:
    """The job's steps with their configuration bound (a reader chunk holds at least one batch)."""
    reader = dataclasses.replace(cfg.reader, chunk=max(cfg.reader.chunk, cfg.matter_config.batch_size))
    return Steps(
        read=read_video, read_args=(reader,),
        matter=MatterActor, matter_args=(cfg.matter, cfg.matter_config),
        encode=encode, encode_args=(cfg.matter, cfg.frames),
        writer=functools.partial(ShardWriter, cfg.out_split, cfg.split,
                                 max_matter_failures=cfg.max_matter_failures),
        lost=lost_keys,
    )


def check_writable(out: SplitDir) -> None:
    """Fail now, not after the matting, when the output folder cannot be written."""
    rel = f".probe-{uuid.uuid4().hex[:8]}"
    try:
        out.makedirs("", exist_ok=True)
        out.write_atomic(rel, b"")
        out.rm(rel)
    except OSError as exc:
        raise JobError(f"cannot write to the output folder {out.url}: {exc}") from exc


def agreed_fingerprint(fingerprints: list[dict]) -> dict:
    """The matter fingerprint every actor reports; actors that loaded different models refuse the run."""
    first = fingerprints[0]
    for i, fp in enumerate(fingerprints[1:], 1):
        if fp != first:
            diff = planning.fingerprint_diff(first, fp)
            raise JobError(f"matter actors 0 and {i} loaded different models ({'; '.join(diff)}): "
                           "give every node the same weights")
    return first


def run_job(cfg: JobConfig) -> tuple[JobResult, list[planning.ShardPlan]]:
    """Plan, select and run the shards of ``cfg``; returns the result and the full plan.

    Raises JobError (before anything is written) for an unsafe split name, an output that cannot be
    written or is held by another run, an empty split, another shard plan in the output, or finished
    shards of another fingerprint (unless ``redo_mismatched``).
    """
    if not schema.is_safe_id(cfg.split):
        raise JobError(f"unsafe split name {cfg.split!r}")
    out = SplitDir(cfg.out_split)
    check_writable(out)
    try:
        videos = list_videos(cfg.split_url)
    except FileNotFoundError as exc:
        raise JobError(str(exc)) from None
    if not videos:
        raise JobError(f"no videos found in {cfg.split_url} (looked for <video>.mp4 with <video>_manual.json in "
                       f"the folder or one level down, or {sav.FRAMES_DIR}/<video>/ frame folders)")
    if cfg.limit_videos is not None:
        videos = videos[:cfg.limit_videos]
    plans = planning.plan_shards(videos, cfg.videos_per_shard)
    try:
        lease = Lease(out, cfg.lease_timeout_s).acquire()
    except LeaseHeld as exc:
        raise JobError(str(exc)) from exc
    try:
        result = _run_leased(cfg, out, plans, lease)
    finally:
        lease.release()
    return result, plans


def _run_leased(cfg: JobConfig, out: SplitDir, plans: list[planning.ShardPlan], lease: Lease) -> JobResult:
    removed = planning.clean_partials(out)
    if removed:
        log.info("removed %d partial files of an interrupted run", removed)
    # every shard's facts, read once (markers past the end of the plan too: settle_plan checks them)
    facts = planning.gather_shard_facts(out, cfg.split, failures=cfg.retry_failed)
    try:
        planning.settle_plan(out, cfg.split, plans, cfg.videos_per_shard, replan=cfg.replan, shards=cfg.shards,
                             limited=cfg.limit_videos is not None, markers=facts.markers)
    except planning.PlanConflict as exc:
        raise JobError(str(exc)) from exc
    if cfg.replan:      # it may have removed every shard
        facts = planning.gather_shard_facts(out, cfg.split, failures=cfg.retry_failed)
    if not cfg.redo_mismatched:  # refuse what can be told now, before the matters load (minutes on GPUs)
        _refuse_mismatched(cfg, planning.refused_shards(plans, out, cfg.split, facts, cfg.known_fingerprint(),
                                                        plan=planning.plan_record(cfg.videos_per_shard),
                                                        limited=cfg.limit_videos is not None))
    try:
        init_ray(cfg.resources)
    except ClusterError as exc:
        raise JobError(str(exc)) from None
    ex = Executor(steps_for(cfg), cfg.resources, cfg.matter_config.batch_size, cfg.progress, on_tick=lease.touch)
    try:
        return _select_and_run(cfg, out, plans, lease, ex, facts)
    finally:
        ex.shutdown()
        _clean_lost_writers(out, lease)


def _clean_lost_writers(out: SplitDir, lease: Lease) -> None:
    """Remove the partial files of shard writers lost during this run (a node gone mid-shard), once no
    writer of this run is left; never while another run holds the lease."""
    if lease.lost:
        return
    try:
        removed = planning.clean_partials(out)
    except OSError as exc:
        log.warning("could not remove the partial files of lost shard writers: %s", exc)
        return
    if removed:
        log.info("removed %d partial files of shard writers lost in this run", removed)


def _refuse_mismatched(cfg: JobConfig, mismatched: dict[int, str]) -> None:
    """Raise the one-line refusal for finished shards this run would not write as they are (if any)."""
    if not mismatched:
        return
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, why in sorted(mismatched.items()):
        groups[why].append(i)
    lines = "; ".join(f"shard{'s' if len(ix) > 1 else ''} {planning.format_indices(ix)}: {why}"
                      for why, ix in list(groups.items())[:3])
    raise JobError(f"{len(mismatched)} finished shard(s) of {cfg.out_split} were not written as this run "
                   f"would write them ({lines}). Rerun with --redo-mismatched to redo them, or use a new "
                   f"--out; shards of different fingerprints are never mixed")


def _select_and_run(cfg: JobConfig, out: SplitDir, plans: list[planning.ShardPlan], lease: Lease,
                    ex: Executor, facts: planning.ShardFacts) -> JobResult:
    try:
        fingerprints = ex.start_actors()
    except ClusterError as exc:
        raise JobError(str(exc)) from None
    matter = agreed_fingerprint(fingerprints)
    # the refusal before the matters loaded assumed every option not declared resolved is fingerprinted as configured
    known, options = cfg.known_fingerprint(), matter.get(schema.FP_OPTIONS) or {}
    if wrong := known.changed(options):
        what = "; ".join(f"{k}: configured {known.options.get(k, '<absent>')!r}, fingerprinted {options[k]!r}"
                         for k in wrong)
        raise JobError(f"matter {cfg.matter!r} fingerprints options otherwise than configured ({what}): "
                       "declare them resolved (output_option(..., resolved=True)) or fingerprint them as configured")
    fingerprint = {schema.FP_MATTER: matter, schema.FP_CONTENT: cfg.content_options()}
    try:
        sel = planning.select_shards(plans, out, cfg.split, fingerprint=fingerprint, shards=cfg.shards,
                                     retry_failed=cfg.retry_failed, redo_mismatched=cfg.redo_mismatched,
                                     verify_tar=cfg.verify_skipped, plan=planning.plan_record(cfg.videos_per_shard),
                                     limited=cfg.limit_videos is not None, facts=facts)
    except ValueError as exc:  # --shards outside the plan
        raise JobError(str(exc)) from None
    _refuse_mismatched(cfg, sel.mismatched)
    log.info("%d videos in %d shards: %d to run, %d skipped", sum(len(p.videos) for p in plans), len(plans),
             len(sel.run), len(sel.skip))
    result = JobResult(shards_skipped=[p.index for p in sel.skip], fingerprint=fingerprint)
    if sel.run:
        marker = {schema.MARKER_FINGERPRINT: fingerprint,
                  schema.MARKER_PLAN: planning.plan_record(cfg.videos_per_shard)}
        tasks = [ShardTask(p.index, p.videos, {schema.MARKER_VIDEOS: [v.video_id for v in p.videos]} | marker)
                 for p in sel.run]
        run = ex.run(tasks)
        for index, res in sorted(run.done.items()):
            result.shards_done.append(index)
            result.ok += res.marker[schema.MARKER_OK]
            result.frames += res.marker[schema.MARKER_FRAMES]
            result.failed.update(res.failed)
        result.shards_failed = dict(sorted(run.failed.items()))
        result.shards_redone = dict(sorted(run.redone.items()))
        result.wall_s = run.wall_s
        if run.stalled:
            result.errors.append(run.stalled)
    result.actors = ex.actor_records()
    if lease.lost:
        result.errors.append(f"the lease {lease.path} was taken by another run during this one")
    return result
