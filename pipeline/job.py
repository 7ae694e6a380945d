"""The Ray job: reader tasks -> matter actors -> encode tasks -> shard writer tasks.

The driver only moves object references: pixels go from a reader's object store to an actor and on
to an encode task without passing through it. Bounded queues keep the object store bounded:
at most ``read_ahead`` videos are read at once (each stream holds a few segments), and each actor
has at most ``queue_depth`` batches queued.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import ray
from tqdm import tqdm

from mava import schema
from models.base import MatterConfig
from pipeline import plan as planning
from pipeline.errors import ReaderError, SampleError
from pipeline.matter_actor import MatterActor, MatterFailure
from pipeline.reader import Failure, ReaderConfig, VideoRef, list_videos, plan_video, read_segments
from pipeline.segments import SegmentData
from pipeline.writer import EncodedSample, encode_sample, failure_row, write_shard

log = logging.getLogger(__name__)


@dataclass
class ResourceConfig:
    """Where things run and how far ahead readers go."""

    address: str | None = None        # Ray address; None: RAY_ADDRESS / running cluster / new local one
    num_actors: int | None = None     # default: one per GPU in the cluster, else cpu_actors
    cpu_actors: int = 1               # actors when the cluster has no GPU
    num_gpus: int | None = None       # local cluster only: GPUs to declare (fake ones are fine for tests)
    num_cpus: int | None = None       # local cluster only
    dashboard: bool = False           # local cluster only: start the Ray dashboard
    actor_cpus: float | None = None   # CPUs reserved per actor (default: 1 for CPU actors, 0.5 for GPU actors)
    reader_cpus: float = 0.5          # CPUs per reader task
    encode_cpus: float = 0.25         # CPUs per encode task
    read_ahead: int = 2               # videos read at once, per actor
    queue_depth: int = 2              # batches queued per actor
    max_restarts: int = 3             # actor restarts (and task retries) after a crash


@dataclass
class JobConfig:
    split: str
    data_root: str = "data"
    out: str = "out/mava"
    matter: str = "videomama"
    matter_config: MatterConfig = field(default_factory=MatterConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    videos_per_shard: int = 8
    shards: set[int] | None = None
    retry_failed: bool = False
    limit_videos: int | None = None
    frames: str = "jpg"               # jpg | none
    progress: bool = True

    @property
    def split_url(self) -> str:
        return f"{self.data_root.rstrip('/')}/{self.split}"

    @property
    def out_split(self) -> str:
        return f"{self.out.rstrip('/')}/{self.split}"

    @property
    def content_options(self) -> dict:
        """The options that change what a shard holds; recorded in its done marker."""
        return {"matter": self.matter, "masklets": self.reader.masklets, "segment_len": self.reader.segment_len,
                "frames": self.frames, "seed": self.matter_config.seed}


@dataclass
class VideoHeader:
    """First item of a reader stream: keys that follow, in order, and rows that already failed."""

    video_id: str
    keys: list[str]
    failures: list[dict]


@dataclass
class JobResult:
    shards_done: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    shards_failed: dict[int, str] = field(default_factory=dict)
    ok: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    frames: int = 0
    wall_s: float = 0.0
    actors: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.shards_failed else 0

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
            "samples_ok": self.ok, "samples_failed": dict(sorted(self.failed.items())),
            "frames": self.frames, "wall_s": round(self.wall_s, 2),
            "frames_per_s": round(self.frames / self.wall_s, 2) if self.wall_s else None,
            "actor_utilisation": self.utilisation(),
            "actor_utilisation_warm": self.utilisation(warm=True),
        }


# --- Ray tasks ------------------------------------------------------------------------------------


def read_video(ref: VideoRef, cfg: ReaderConfig) -> Iterator[Any]:
    """Reader stream of one video: a VideoHeader, then one SegmentData or Failure per key.

    Never raises: typed input errors become failed rows, and so does anything unexpected
    (as ReaderError, logged with its traceback), so one bad video cannot fail its shard.
    """
    try:
        plan = plan_video(ref, cfg)
    except Exception as exc:  # noqa: BLE001 - recorded as this video's failed row
        err = exc if isinstance(exc, SampleError) else _unexpected(ref, exc)
        row = failure_row(schema.video_failure_key(ref.video_id), ref.video_id, err.error_type, str(err))
        yield VideoHeader(ref.video_id, [], [row])
        return
    rows = [failure_row(f.key, f.video_id, f.error.error_type, str(f.error), source=f.source,
                        masklet_id=f.masklet_id, start=f.start) for f in plan.failures]
    yield VideoHeader(ref.video_id, [s.key for s in plan.segments], rows)
    done = 0
    try:
        for item in read_segments(plan, cfg):
            yield item
            done += 1
    except Exception as exc:  # noqa: BLE001 - the rest of this video's samples fail, recorded
        err = _unexpected(ref, exc)
        for s in plan.segments[done:]:
            yield Failure(s.key, s.video_id, s.source, s.masklet_id, s.start, err)


def _unexpected(ref: VideoRef, exc: Exception) -> ReaderError:
    log.exception("unexpected error reading %s", ref.video_id)
    return ReaderError(str(getattr(ref, "video_url", None) or ref.video_id), f"{type(exc).__name__}: {exc}")


def encode(item: SegmentData | Failure, alpha: Any, matter: str, frames: str) -> EncodedSample | dict:
    """An encoded ok sample, or the failed row of a reader/matter failure."""
    if isinstance(item, Failure):
        return failure_row(item.key, item.video_id, item.error.error_type, str(item.error), source=item.source,
                           masklet_id=item.masklet_id, start=item.start, matter=matter)
    if isinstance(alpha, MatterFailure):
        return failure_row(item.segment.key, item.segment.video_id, alpha.error_type, alpha.message,
                           segment=item.segment, matter=matter)
    try:
        return encode_sample(item, alpha, matter, frames)
    except ValueError as exc:  # e.g. a matte whose shape does not match its segment
        return failure_row(item.segment.key, item.segment.video_id, type(exc).__name__, f"matter {matter}: {exc}",
                           segment=item.segment, matter=matter)


def write(out_split: str, split: str, index: int, marker: dict, failures: list[dict],
          *encoded: EncodedSample | dict) -> dict:
    """Assemble and write one shard; ``marker`` (its videos and options) joins the done marker."""
    samples = [e for e in encoded if isinstance(e, EncodedSample)]
    rows = failures + [e for e in encoded if isinstance(e, dict)]
    return write_shard(out_split, split, index, samples, rows, extra=marker)


# --- driver ---------------------------------------------------------------------------------------


@dataclass
class _ShardState:
    plan: planning.ShardPlan
    next_video: int = 0
    open_streams: int = 0
    failures: list = field(default_factory=list)
    encoded: list = field(default_factory=list)
    writing: Any = None

    @property
    def all_read(self) -> bool:
        return self.next_video == len(self.plan.videos) and self.open_streams == 0


@dataclass
class _Stream:
    shard: _ShardState
    video_id: str
    keys: list[str] | None = None
    received: int = 0


def init_ray(res: ResourceConfig) -> None:
    """Connect to a running cluster (``ray job submit``, RAY_ADDRESS, --address) or start a local one."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if res.address in (None, "local"):
        if res.num_gpus is not None:
            kwargs["num_gpus"] = res.num_gpus
        if res.num_cpus is not None:
            kwargs["num_cpus"] = res.num_cpus
        kwargs["include_dashboard"] = res.dashboard
    ray.init(address=res.address, **kwargs)


def _num_actors(res: ResourceConfig) -> tuple[int, int]:
    """(actors, gpus per actor)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if res.num_actors is not None:
        return res.num_actors, 1 if gpus else 0
    return (gpus, 1) if gpus else (res.cpu_actors, 0)


def _check_cpus(needed: float) -> None:
    """Refuse a layout where actors leave no CPU for readers and encoders (it would hang)."""
    total = ray.cluster_resources().get("CPU", 0)
    if needed > total:
        raise ValueError(f"the cluster has {total:g} CPUs but the actors plus one reader and one encoder need "
                         f"{needed:g}: use fewer --cpu-actors/--num-actors or more --num-cpus")


class Driver:
    """Runs the selected shards of one job; see :func:`run_job`."""

    def __init__(self, cfg: JobConfig, shards: list[planning.ShardPlan]):
        self.cfg = cfg
        res = cfg.resources
        n, gpus = _num_actors(res)
        actor_cpus = res.actor_cpus if res.actor_cpus is not None else (0.5 if gpus else 1.0)
        _check_cpus(n * actor_cpus + res.reader_cpus + res.encode_cpus)
        actor_cls = ray.remote(MatterActor).options(
            num_gpus=gpus, num_cpus=actor_cpus, max_restarts=res.max_restarts,
            max_task_retries=res.max_restarts)
        self.actors = [actor_cls.remote(cfg.matter, cfg.matter_config) for _ in range(n)]
        self.batch = max(1, cfg.matter_config.batch_size)
        self.read_task = ray.remote(read_video).options(
            num_cpus=res.reader_cpus, num_returns="streaming",
            _generator_backpressure_num_objects=self.batch * res.queue_depth + 2)
        self.encode_task = ray.remote(encode).options(num_cpus=res.encode_cpus)
        self.write_task = ray.remote(write).options(num_cpus=res.encode_cpus, max_retries=res.max_restarts)
        self.pending = collections.deque(_ShardState(p) for p in shards)
        self.active: list[_ShardState] = []
        self.streams: dict[Any, _Stream] = {}
        self.ready_items: collections.deque = collections.deque()   # (shard, item ref)
        self.in_actor: dict[Any, tuple] = {}                         # first result ref -> (actor, batch)
        self.actor_load = [0] * n
        self.writing: dict[Any, _ShardState] = {}
        self.result = JobResult()
        self.max_streams = max(1, res.read_ahead * n)
        self.max_queue = res.queue_depth

    # -- steps --
    def _open_streams(self) -> None:
        while len(self.streams) < self.max_streams:
            shard = next((s for s in self.active if s.next_video < len(s.plan.videos)), None)
            if shard is None:
                if not self.pending:
                    return
                shard = self.pending.popleft()
                self.active.append(shard)
                continue
            ref = shard.plan.videos[shard.next_video]
            shard.next_video += 1
            shard.open_streams += 1
            self.streams[self.read_task.remote(ref, self.cfg.reader)] = _Stream(shard, ref.video_id)

    def _pull(self, gen, stream: _Stream) -> None:
        try:
            item = next(gen)
        except StopIteration:
            self._close(gen, stream, None)
            return
        if stream.keys is None:
            try:
                header: VideoHeader = ray.get(item)
            except ray.exceptions.RayError as exc:
                self._close(gen, stream, exc)
                return
            stream.keys = header.keys
            stream.shard.failures += header.failures
        else:
            stream.received += 1
            self.ready_items.append((stream.shard, item))

    def _close(self, gen, stream: _Stream, exc: Exception | None) -> None:
        """A stream ended; keys it never delivered become failed rows."""
        del self.streams[gen]
        stream.shard.open_streams -= 1
        keys = stream.keys or []
        missing = keys[stream.received:] if exc is not None or stream.received < len(keys) else []
        if stream.keys is None:
            missing = [schema.video_failure_key(stream.video_id)]
        for key in missing:
            why = getattr(exc, "cause", None) or exc
            err_type = type(why).__name__ if why is not None else "ReaderStreamEnded"
            msg = str(why) if why is not None else "reader stopped before this segment"
            stream.shard.failures.append(failure_row(key, stream.video_id, err_type, f"reader: {msg}"))

    def _dispatch(self) -> None:
        """Send ready segments to the least-loaded actors, in batches."""
        while self.ready_items:
            i = min(range(len(self.actors)), key=self.actor_load.__getitem__)
            if self.actor_load[i] >= self.max_queue:
                return
            batch = [self.ready_items.popleft() for _ in range(min(self.batch, len(self.ready_items)))]
            refs = [r for _, r in batch]
            outs = self.actors[i].refine.options(num_returns=len(refs)).remote(*refs)
            outs = outs if isinstance(outs, list) else [outs]
            self.actor_load[i] += 1
            self.in_actor[outs[0]] = (i, len(refs))
            for (shard, item), alpha in zip(batch, outs):
                shard.encoded.append(self.encode_task.remote(item, alpha, self.cfg.matter, self.cfg.frames))

    def _maybe_write(self) -> None:
        for shard in list(self.active):
            if shard.all_read and not any(s is shard for s, _ in self.ready_items):
                self.active.remove(shard)
                ref = self.write_task.remote(self.cfg.out_split, self.cfg.split, shard.plan.index,
                                             {schema.MARKER_VIDEOS: [v.video_id for v in shard.plan.videos],
                                              schema.MARKER_OPTIONS: self.cfg.content_options},
                                             shard.failures, *shard.encoded)
                shard.encoded = []  # the writer task holds them now
                self.writing[ref] = shard

    def _finish_write(self, ref) -> None:
        shard = self.writing.pop(ref)
        try:
            marker = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = str(getattr(exc, "cause", None) or exc).splitlines()[0]
            log.error("shard %d could not be completed: %s", shard.plan.index, reason)
            self.result.shards_failed[shard.plan.index] = reason
            return
        self.result.shards_done.append(shard.plan.index)
        self.result.ok += marker[schema.MARKER_OK]
        self.result.frames += marker[schema.MARKER_FRAMES]

    def run(self) -> JobResult:
        t0 = time.perf_counter()
        bar = tqdm(desc=f"{self.cfg.split} samples", unit="seg", disable=not self.cfg.progress, smoothing=0.1)
        while self.pending or self.active or self.streams or self.writing or self.in_actor:
            self._open_streams()
            self._dispatch()
            self._maybe_write()
            room = len(self.ready_items) < self.max_queue * self.batch * len(self.actors)
            streams = [g for g, s in self.streams.items() if room or s.keys is None]
            waitables = streams + list(self.in_actor) + list(self.writing)
            if not waitables:
                continue
            ready, rest = ray.wait(waitables, num_returns=1, timeout=1.0, fetch_local=False)
            if ready and rest:  # take everything else that is ready too: fewer driver round trips
                ready += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
            for ref in ready:
                if ref in self.in_actor:
                    i, n = self.in_actor.pop(ref)
                    self.actor_load[i] -= 1
                    bar.update(n)
                elif ref in self.writing:
                    self._finish_write(ref)
                else:
                    self._pull(ref, self.streams[ref])
        bar.close()
        self.result.wall_s = time.perf_counter() - t0
        self.result.actors = [_actor_record(a) for a in self.actors]
        return self.result


def _actor_record(actor) -> dict:
    """Where an actor ran and how busy it was; a dead actor is recorded as such."""
    try:
        info, stats = ray.get([actor.info.remote(), actor.stats.remote()])
    except ray.exceptions.RayActorError as exc:
        return {"info": {"dead": str(exc).splitlines()[0]}, "stats": {"busy_s": 0.0, "idle_s": 0.0}}
    return {"info": info, "stats": stats}


def run_job(cfg: JobConfig) -> tuple[JobResult, list[planning.ShardPlan]]:
    """Plan, select and run the shards of ``cfg``; returns the result and the full plan."""
    if not schema.is_safe_id(cfg.split):
        raise ValueError(f"unsafe split name {cfg.split!r}")
    videos = list_videos(cfg.split_url)
    if cfg.limit_videos is not None:
        videos = videos[:cfg.limit_videos]
    plans = planning.plan_shards(videos, cfg.videos_per_shard)
    removed = planning.clean_partials(cfg.out_split)
    if removed:
        log.info("removed %d partial files of an interrupted run", removed)
    stale = planning.stale_shards(cfg.out_split, cfg.split, len(plans)) if cfg.limit_videos is None else []
    if stale:
        raise ValueError(f"{cfg.out_split} holds shards past this plan's {len(plans)} ({stale[0]}, ...): it was "
                         f"written with another shard plan (--videos-per-shard?); use a new --out")
    todo, skipped = planning.select_shards(plans, cfg.out_split, cfg.split, shards=cfg.shards,
                                           retry_failed=cfg.retry_failed, options=cfg.content_options)
    log.info("%d videos in %d shards: %d to run, %d skipped", len(videos), len(plans), len(todo), len(skipped))
    result = Driver(cfg, todo).run() if todo else JobResult()
    result.shards_skipped = [p.index for p in skipped]
    result.failed = _failed_counts(cfg, result.shards_done)
    return result, plans


def _failed_counts(cfg: JobConfig, shards: list[int]) -> collections.Counter:
    """Failed rows by error type in the given shards' manifests."""
    counts: collections.Counter = collections.Counter()
    for index in shards:
        counts.update(planning.shard_failures(cfg.out_split, cfg.split, index))
    return counts
