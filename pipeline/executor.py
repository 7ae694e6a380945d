"""The executor: everything Ray. It starts or joins the cluster, starts the matter actors and the shard
writers, and runs the scheduling loop that moves object references between the job's steps:

    read (streaming task per video) -> matter (actor per GPU, batches) -> encode (task) -> writer (actor)

The steps are plain callables and classes given in :class:`Steps`; the executor knows only their
stream protocol (``VideoHeader``, ``Next``, ``Failure``, ``BatchDone``). The driver never fetches
pixels: a reader announces each segment with a small ``Next(key)`` (or sends its ``Failure``), so
failures go straight to the writer and pixels go reader -> actor -> encoder -> writer. Bounded queues
keep the object store bounded: at most ``read_ahead`` videos per actor are read at once (each stream
holds a few segments), and each actor has at most ``queue_depth`` batches queued.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import ray
from tqdm import tqdm

from mava import schema
from pipeline.errors import Failure
from pipeline.matter_actor import BatchDone
from pipeline.reader import Next, VideoHeader

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
    writers: int | None = None        # shard writer actors (default: one per 4 matter actors)


@dataclass
class Steps:
    """The job's steps, as plain callables; the executor runs them on Ray.

    read(video_ref, *read_args) -> iterator of VideoHeader, then per key a Failure or Next + payload;
    matter: an actor class, matter(*matter_args), whose refine(*payloads) returns one result per
    payload and a BatchDone; encode(payload, result, *encode_args) -> what the writer takes;
    writer(index, marker) -> an object with add(item), add_system_failure(key, reason), commit().
    """

    read: Callable[..., Iterator]
    read_args: tuple
    matter: type
    matter_args: tuple
    encode: Callable
    encode_args: tuple
    writer: Callable[[int, dict], Any]
    matter_name: str = ""             # recorded on the failures of segments routed to the matter


@dataclass
class ShardTask:
    """One shard to write: its index, videos (opaque refs with ``video_id``) and marker fields."""

    index: int
    videos: tuple
    marker: dict


@dataclass
class ExecResult:
    done: dict[int, Any] = field(default_factory=dict)      # index -> the writer's commit result
    failed: dict[int, str] = field(default_factory=dict)    # index -> why it could not be completed
    wall_s: float = 0.0


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


def _reason(exc: BaseException) -> str:
    """First line of what went wrong in a Ray task or actor."""
    return str(getattr(exc, "cause", None) or exc).strip().splitlines()[0]


class WriterPool:
    """A Ray actor holding the open shard writers of some shards (I/O bound: no CPU reserved)."""

    def __init__(self, factory: Callable[[int, dict], Any]):
        self.factory = factory
        self.open: dict[int, Any] = {}

    def open_shard(self, index: int, marker: dict) -> None:
        self.open[index] = self.factory(index, marker)

    def add(self, index: int, *items) -> None:
        """Items by value (e.g. failures): never raises, so no outcome is lost unseen."""
        for item in items:
            try:
                self.open[index].add(item)
            except Exception as exc:  # noqa: BLE001 - recorded: the shard will not be marked done
                self.open[index].add_system_failure(getattr(item, "key", "?"), f"writer: {exc!r}")

    def add_ref(self, index: int, key: str, boxed: list) -> None:
        """One encoded sample by reference (boxed so that a failed producer reaches us as an error)."""
        try:
            item = ray.get(boxed[0])
        except ray.exceptions.RayError as exc:
            self.open[index].add_system_failure(key, _reason(exc))
            return
        self.add(index, item)

    def add_system_failure(self, index: int, key: str, reason: str) -> None:
        self.open[index].add_system_failure(key, reason)

    def commit(self, index: int):
        return self.open.pop(index).commit()

    def abort(self, index: int) -> None:
        w = self.open.pop(index, None)
        if w is not None:
            w.close()


# --- the scheduling loop --------------------------------------------------------------------------


@dataclass
class _Shard:
    task: ShardTask
    writer: Any                       # the WriterPool actor holding this shard
    next_video: int = 0
    open_streams: int = 0
    in_flight: int = 0                # payloads read but not yet handed to the writer
    committing: bool = False

    @property
    def all_read(self) -> bool:
        return self.next_video == len(self.task.videos) and self.open_streams == 0


@dataclass
class _Stream:
    shard: _Shard
    video_id: str
    keys: list[str] | None = None
    delivered: int = 0                # keys answered (payload or failure)
    payload_key: str | None = None    # the key announced by Next, whose payload comes next


class Executor:
    """Runs the steps over shards on a Ray cluster (joined or started by :func:`init_ray`)."""

    def __init__(self, steps: Steps, res: ResourceConfig, batch_size: int = 1, progress: bool = True):
        self.steps, self.res = steps, res
        self.batch = max(1, batch_size)
        self.progress = progress
        self.actors: list = []

    def start_actors(self) -> list[dict]:
        """Start the matter actors (each loads its matter) and return their fingerprints."""
        res = self.res
        n, gpus = _num_actors(res)
        actor_cpus = res.actor_cpus if res.actor_cpus is not None else (0.5 if gpus else 1.0)
        _check_cpus(n * actor_cpus + res.reader_cpus + res.encode_cpus)
        actor_cls = ray.remote(self.steps.matter).options(
            num_gpus=gpus, num_cpus=actor_cpus, max_restarts=res.max_restarts,
            max_task_retries=res.max_restarts, max_concurrency=2)
        self.actors = [actor_cls.remote(*self.steps.matter_args) for _ in range(n)]
        return ray.get([a.fingerprint.remote() for a in self.actors])

    def run(self, tasks: list[ShardTask]) -> ExecResult:
        """Write every shard of ``tasks``; a shard that cannot be completed is reported, not raised."""
        if not self.actors:
            self.start_actors()
        return _Loop(self, tasks).run()

    def actor_records(self) -> list[dict]:
        """Where each matter actor ran and how busy it was."""
        return [_actor_record(a) for a in self.actors]

    def shutdown(self) -> None:
        """Stop the matter actors (frees their GPUs/CPUs for the next job in this Ray session)."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


class _Loop:
    """The driver's scheduling loop of one :meth:`Executor.run` (moves references only)."""

    def __init__(self, ex: Executor, tasks: list[ShardTask]):
        steps, res = ex.steps, ex.res
        self.ex, self.steps = ex, steps
        self.actors = ex.actors
        n = len(self.actors)
        self.read_task = ray.remote(steps.read).options(
            num_cpus=res.reader_cpus, num_returns="streaming",
            _generator_backpressure_num_objects=2 * ex.batch * res.queue_depth + 4)
        self.encode_task = ray.remote(steps.encode).options(num_cpus=res.encode_cpus, max_retries=res.max_restarts)
        n_writers = res.writers or max(1, math.ceil(n / 4))
        pool_cls = ray.remote(WriterPool).options(num_cpus=0)
        self.writers = [pool_cls.remote(steps.writer) for _ in range(min(n_writers, max(1, len(tasks))))]
        self.pending = collections.deque(tasks)
        self.active: list[_Shard] = []
        self.streams: dict[Any, _Stream] = {}
        self.ready: collections.deque = collections.deque()   # (shard, key, payload ref)
        self.in_actor: dict[Any, tuple[int, list]] = {}       # BatchDone ref -> (actor, [(shard, key, enc ref)])
        self.encoding: dict[Any, tuple[_Shard, str]] = {}     # enc ref -> (shard, key)
        self.committing: dict[Any, _Shard] = {}
        self.load = [0] * n
        self.alive = [True] * n
        self.result = ExecResult()
        self.max_streams = max(1, res.read_ahead * n)
        self.max_queue = res.queue_depth
        self.bar = tqdm(desc="samples", unit="seg", disable=not ex.progress, smoothing=0.1)

    # -- steps of the loop --
    def _open_streams(self) -> None:
        while len(self.streams) < self.max_streams:
            shard = next((s for s in self.active if s.next_video < len(s.task.videos)), None)
            if shard is None:
                if not self.pending:
                    return
                task = self.pending.popleft()
                writer = self.writers[task.index % len(self.writers)]
                writer.open_shard.remote(task.index, task.marker)
                self.active.append(_Shard(task, writer))
                continue
            ref = shard.task.videos[shard.next_video]
            shard.next_video += 1
            shard.open_streams += 1
            self.streams[self.read_task.remote(ref, *self.steps.read_args)] = _Stream(shard, ref.video_id)

    def _pull(self, gen, stream: _Stream) -> None:
        try:
            item_ref = next(gen)
        except StopIteration:
            self._close(gen, stream, None)
            return
        if stream.payload_key is not None:          # pixels: never fetched here
            stream.shard.in_flight += 1
            self.ready.append((stream.shard, stream.payload_key, item_ref))
            stream.payload_key = None
            return
        try:
            item = ray.get(item_ref)                 # small: a header, a Next or a Failure
        except ray.exceptions.RayError as exc:
            self._close(gen, stream, exc)
            return
        shard = stream.shard
        if isinstance(item, VideoHeader):
            stream.keys = item.keys
            if item.failures:
                shard.writer.add.remote(shard.task.index, *item.failures)
        elif isinstance(item, Next):
            stream.payload_key = item.key
            stream.delivered += 1
        elif isinstance(item, Failure):
            item.matter, item.stage = self.steps.matter_name, "read"
            stream.delivered += 1
            shard.writer.add.remote(shard.task.index, item)
        else:
            raise TypeError(f"unexpected reader item {type(item).__name__} from {stream.video_id}")

    def _close(self, gen, stream: _Stream, exc: BaseException | None) -> None:
        """A stream ended; keys it never delivered become failures."""
        del self.streams[gen]
        shard = stream.shard
        shard.open_streams -= 1
        if stream.keys is None:
            missing = [schema.video_failure_key(stream.video_id)]
        else:
            missing = stream.keys[stream.delivered:]
        if stream.payload_key is not None:  # announced, never sent
            missing = [stream.payload_key, *missing]
        why = getattr(exc, "cause", None) or exc
        err_type = type(why).__name__ if why is not None else "ReaderStreamEnded"
        msg = f"reader: {why}" if why is not None else "reader: reader stopped before this segment"
        fails = [Failure(key, stream.video_id, error_type=err_type, message=msg) for key in missing]
        if fails:
            shard.writer.add.remote(shard.task.index, *fails)

    def _dispatch(self) -> None:
        """Send ready segments to the least-loaded live actors, in batches."""
        while self.ready:
            live = [i for i in range(len(self.actors)) if self.alive[i]]
            if not live:
                return
            i = min(live, key=self.load.__getitem__)
            if self.load[i] >= self.max_queue:
                return
            batch = [self.ready.popleft() for _ in range(min(self.ex.batch, len(self.ready)))]
            outs = self.actors[i].refine.options(num_returns=len(batch) + 1).remote(*[r for _, _, r in batch])
            self.load[i] += 1
            sent = []
            for (shard, key, data), alpha in zip(batch, outs[:-1]):
                enc = self.encode_task.remote(data, alpha, *self.steps.encode_args)
                self.encoding[enc] = (shard, key)
                sent.append((shard, key, enc))
            self.in_actor[outs[-1]] = (i, sent)

    def _batch_done(self, ref) -> None:
        i, sent = self.in_actor.pop(ref)
        self.load[i] -= 1
        try:
            done: BatchDone = ray.get(ref)
            self.bar.update(done.segments)
        except ray.exceptions.ActorDiedError as exc:
            log.error("matter actor %d died for good: %s", i, _reason(exc))
            self.alive[i] = False
        except ray.exceptions.RayError as exc:
            log.error("a batch on matter actor %d was lost: %s", i, _reason(exc))
        if not any(self.alive):
            self._fail_all("every matter actor died")

    def _encoded(self, ref) -> None:
        shard, key = self.encoding.pop(ref)
        shard.writer.add_ref.remote(shard.task.index, key, [ref])
        shard.in_flight -= 1

    def _maybe_commit(self) -> None:
        for shard in list(self.active):
            if shard.all_read and shard.in_flight == 0:
                self.active.remove(shard)
                self.committing[shard.writer.commit.remote(shard.task.index)] = shard

    def _committed(self, ref) -> None:
        shard = self.committing.pop(ref)
        index = shard.task.index
        try:
            self.result.done[index] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = _reason(exc)
            log.error("shard %d could not be completed: %s", index, reason)
            self.result.failed[index] = reason

    def _fail_all(self, reason: str) -> None:
        """No matter actor is left: every unfinished shard fails; stop reading."""
        for gen in list(self.streams):
            ray.cancel(gen)
        self.streams.clear()
        self.ready.clear()
        for shard in [*self.active, *(_Shard(t, None) for t in self.pending)]:
            self.result.failed[shard.task.index] = reason
            if shard.writer is not None:
                shard.writer.abort.remote(shard.task.index)
        self.active.clear()
        self.pending.clear()
        self.encoding.clear()
        self.in_actor.clear()

    def run(self) -> ExecResult:
        t0 = time.perf_counter()
        while self.pending or self.active or self.streams or self.committing or self.in_actor or self.encoding:
            self._open_streams()
            self._dispatch()
            self._maybe_commit()
            room = len(self.ready) < self.max_queue * self.ex.batch * len(self.actors)
            streams = [g for g, s in self.streams.items() if room or s.keys is None or s.payload_key is None]
            waitables = streams + list(self.in_actor) + list(self.encoding) + list(self.committing)
            if not waitables:
                continue
            ready, rest = ray.wait(waitables, num_returns=1, timeout=1.0, fetch_local=False)
            if ready and rest:  # take everything else that is ready too: fewer driver round trips
                ready += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
            for ref in ready:
                if ref in self.in_actor:
                    self._batch_done(ref)
                elif ref in self.encoding:
                    self._encoded(ref)
                elif ref in self.committing:
                    self._committed(ref)
                elif ref in self.streams:
                    self._pull(ref, self.streams[ref])
        self.bar.close()
        for w in self.writers:  # every shard is committed or failed: their spill files go with them
            ray.kill(w, no_restart=True)
        self.result.wall_s = time.perf_counter() - t0
        return self.result


def _actor_record(actor) -> dict:
    """Where an actor ran and how busy it was; a dead actor is recorded as such."""
    try:
        info, stats = ray.get([actor.info.remote(), actor.stats.remote()])
    except ray.exceptions.RayActorError as exc:
        return {"info": {"dead": _reason(exc)}, "stats": {"busy_s": 0.0, "idle_s": 0.0}}
    return {"info": info, "stats": stats}
