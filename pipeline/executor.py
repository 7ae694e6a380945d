"""The executor: everything Ray. It joins or starts the cluster, starts the matter actors and the shard
writers, and runs the scheduling loop that moves object references between the job's steps:

    read (streaming task per video) -> matter (actor per GPU) -> encode (task per chunk) -> writer (actor)

It knows the steps only through ``pipeline.protocol``. The driver never fetches pixels: a reader
stream announces its video's keys in a small header and then yields chunks of segments, which go
reader -> actor -> encoder -> writer as references; the driver's work is per chunk, not per segment.
Bounded queues keep the object store bounded: at most ``read_ahead`` videos per actor are read at
once (each stream holds a few chunks), and each actor has at most ``queue_depth`` chunks queued.

Faults (nodes come and go):

- a chunk on a matter actor that died or is restarting goes back to the queue and runs on a live
  actor; an actor that comes back (restarted, or its GPU returned with a node) is used again;
- a chunk whose data was lost (its reader's node died), a shard writer lost with its node, or a
  shard whose writer recorded system failures is redone from its videos, in the same run, up to
  ``shard_retries`` times; a shard that lost samples is never marked done;
- a video whose reader process dies on it every time is recorded as failed rows (``Steps.lost``);
- a stall watchdog ends a run in which nothing progresses for ``stall_timeout`` seconds (while no
  actor is busy) with one line saying what it waits for; every unfinished shard is reported failed.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from tqdm import tqdm

from models.options import int_at_least, number_at_least, option
from pipeline.protocol import Steps, VideoHeader

log = logging.getLogger(__name__)

PING_PERIOD_S = 2.0          # how often an actor that is down (or a writer) is asked whether it is up
WRITER_PING_PERIOD_S = 5.0


@dataclass
class ResourceConfig:
    """Where things run, how far ahead readers go, and how faults are bounded (each field is a flag)."""

    address: str | None = option(None, "Ray cluster to join: host:port, 'auto' (RAY_ADDRESS, else the cluster "
                                       "`ray start` recorded on this machine) or 'local' (always a new local "
                                       "cluster). Default: RAY_ADDRESS when set (as under `ray job submit`), else a "
                                       "new local cluster: a cluster left running by another session is never "
                                       "joined by accident. A dead address fails in seconds (exit 2)")
    num_actors: int | None = option(None, "matter actors; default one per GPU in the cluster, else --cpu-actors",
                                    parse=int_at_least(1))
    cpu_actors: int = option(1, "matter actors when the cluster has no GPU", parse=int_at_least(1))
    num_gpus: int | None = option(None, "local cluster only: GPUs to declare (fake ones are fine for tests)",
                                  parse=int_at_least(0))
    num_cpus: int | None = option(None, "local cluster only: CPUs to declare", parse=int_at_least(1))
    dashboard: bool = option(False, "local cluster only: start the Ray dashboard")
    actor_cpus: float | None = option(None, "CPUs reserved per matter actor (default: 1 for CPU actors, 0.5 for "
                                            "GPU actors)", parse=number_at_least(0))
    reader_cpus: float = option(0.5, "CPUs reserved per reader task", parse=number_at_least(0))
    encode_cpus: float = option(0.25, "CPUs reserved per encode task", parse=number_at_least(0))
    read_ahead: int = option(2, "videos being read at once, per matter actor", parse=int_at_least(1))
    queue_depth: int = option(2, "chunks queued per matter actor", parse=int_at_least(1))
    max_restarts: int = option(3, "restarts of a crashed actor, retries of a crashed task and resends of a chunk "
                                  "to another actor, e.g. after a GPU error", parse=int_at_least(0))
    writers: int | None = option(None, "shard writer actors (default: one per 4 matter actors)",
                                 parse=int_at_least(1))
    writer_resource: str | None = option(None, "place shard writers only on nodes that declare this custom Ray "
                                               "resource (e.g. nodes with local disk for the spill files); "
                                               "default: anywhere", metavar="NAME")
    stall_timeout: float = option(180.0, "end the run (exit 1, saying what it waits for, lease released) when "
                                         "nothing progresses for this many seconds while no matter actor is busy, "
                                         "e.g. a lost node took the last GPU", parse=number_at_least(1))
    shard_retries: int = option(2, "times a shard that lost data (its reader's or writer's node died) is redone "
                                   "in the same run before it is reported failed", parse=int_at_least(0))


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
    stalled: str | None = None                               # what the run waited for when it gave up
    redone: dict[int, int] = field(default_factory=dict)    # index -> times it was redone after a loss
    wall_s: float = 0.0


class ClusterError(RuntimeError):
    """The cluster cannot be reached or cannot place the actors (one line for the user)."""


# --- connecting ------------------------------------------------------------------------------------


def resolve_address(address: str | None) -> tuple[str, str]:
    """(address for ``ray.init``, where it came from). ``None``: RAY_ADDRESS (set by ``ray job submit``)
    else ``local`` (a new local cluster; a cluster left in /tmp/ray by another session is never joined
    by accident); ``auto``: RAY_ADDRESS, else the cluster ``ray start`` recorded on this machine."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if address is None:
        return (env, "RAY_ADDRESS") if env else ("local", "default")
    if address == "auto":
        if env:
            return env, "RAY_ADDRESS"
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
        if not found:
            raise ClusterError("--address auto: no Ray cluster was started on this machine (`ray start --head`), "
                               "and RAY_ADDRESS is not set; drop --address to start a local cluster")
        return found, "the cluster recorded by `ray start` in /tmp/ray/ray_current_cluster"
    return address, "--address"


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, source: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, in one line, when nothing listens at a cluster address (Ray itself retries a
    dead address for minutes)."""
    if address.startswith(("http://", "https://")):
        raise ClusterError(f"{address} (from {source}) is a dashboard URL, which `ray job submit` takes; the job "
                           "itself needs the cluster address host:6379, or none at all under `ray job submit`")
    hp = _host_port(address)
    if hp is None:
        raise ClusterError(f"bad Ray address {address!r} (from {source}): use host:port, 'auto' or 'local'")
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as exc:
        fix = ("remove the stale file or start the cluster again" if "ray_current_cluster" in source
               else "start the cluster (`ray start --head`), fix the address, or use --address local for a "
                    "new local cluster")
        raise ClusterError(f"no Ray cluster answers at {address} (from {source}: {exc.strerror or exc}): {fix}"
                           ) from None


def init_ray(res: ResourceConfig) -> None:
    """Join the cluster the address names (see :func:`resolve_address`) or start a local one."""
    if ray.is_initialized():
        return
    address, source = resolve_address(res.address)
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if address == "local":
        if res.num_gpus is not None:
            kwargs["num_gpus"] = res.num_gpus
        if res.num_cpus is not None:
            kwargs["num_cpus"] = res.num_cpus
        kwargs["include_dashboard"] = res.dashboard
    else:
        check_reachable(address, source)
        log.info("joining the Ray cluster at %s (from %s)", address, source)
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when a new node does not start in time
        what = "start a local Ray cluster" if address == "local" else f"join the Ray cluster at {address}"
        raise ClusterError(f"could not {what}: {_reason(exc)}") from None


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
        raise ClusterError(f"the cluster has {total:g} CPUs but the actors plus one reader and one encoder need "
                           f"{needed:g}: use fewer --cpu-actors/--num-actors or more --num-cpus")


def _reason(exc: BaseException) -> str:
    """First line of what went wrong in a Ray task or actor."""
    text = str(getattr(exc, "cause", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _free(resource: str) -> str:
    """'N of M free' for a cluster resource."""
    total = ray.cluster_resources().get(resource, 0)
    free = ray.available_resources().get(resource, 0)
    return f"{free:g} of {total:g} free in the cluster"


class WriterPool:
    """A Ray actor holding the open shard writers of some shards (I/O bound: no CPU reserved).

    Every call names the shard and its attempt; calls for an attempt that is no longer open are
    dropped (a shard redone after a loss never mixes samples of two attempts). Samples handed over by
    encode tasks may arrive before the driver's ``open_shard`` (calls from different callers are not
    ordered): they wait for it."""

    def __init__(self, factory: Callable[[int, dict], Any]):
        self.factory = factory
        self.open: dict[int, tuple[int, Any]] = {}
        self.early: dict[tuple[int, int], list] = {}   # (index, attempt) -> items that came before open_shard

    def ping(self) -> bool:
        return True

    def _writer(self, index: int, attempt: int):
        held = self.open.get(index)
        return held[1] if held is not None and held[0] == attempt else None

    def open_shard(self, index: int, attempt: int, marker: dict) -> None:
        self.abort(index)
        self.open[index] = (attempt, self.factory(index, marker))
        for key in [k for k in self.early if k[0] == index and k[1] <= attempt]:
            items = self.early.pop(key)
            if key[1] == attempt:
                self.add(index, attempt, *items)

    def add(self, index: int, attempt: int, *items) -> None:
        """Items by value (e.g. failures): never raises, so no outcome is lost unseen."""
        held = self.open.get(index)
        if held is None or held[0] < attempt:      # not opened yet: keep them for open_shard
            self.early.setdefault((index, attempt), []).extend(items)
            return
        w = self._writer(index, attempt)
        for item in items if w is not None else ():
            try:
                w.add(item)
            except Exception as exc:  # noqa: BLE001 - recorded: the shard will not be marked done
                w.add_system_failure(getattr(item, "key", "?"), f"writer: {exc!r}")

    def commit(self, index: int, attempt: int, expected: int):
        """Commit a shard that holds exactly the ``expected`` samples the driver routed to it."""
        w = self._writer(index, attempt)
        if w is None:
            raise RuntimeError(f"shard {index} attempt {attempt} is not open on this writer")
        if w.count != expected:
            w.add_system_failure("?", f"the writer holds {w.count} samples, {expected} were sent")
        del self.open[index]
        return w.commit()

    def abort(self, index: int) -> None:
        held = self.open.pop(index, None)
        if held is not None:
            held[1].close()


# --- the scheduling loop --------------------------------------------------------------------------


@dataclass(eq=False)
class _Writer:
    handle: Any
    alive: bool = True
    ping: Any = None
    next_ping: float = 0.0


@dataclass(eq=False)
class _Actor:
    index: int
    handle: Any
    state: str = "up"                 # up | down (restarting or unreachable) | dead (for good)
    load: int = 0                     # chunks in flight
    ping: Any = None
    next_ping: float = 0.0
    why: str = ""


@dataclass(eq=False)
class _Shard:
    task: ShardTask
    attempt: int
    writer: _Writer
    next_video: int = 0
    open_streams: int = 0
    pending: int = 0                  # chunks received from readers, not yet handed to the writer
    samples: int = 0                  # samples (ok or failed) routed to the writer so far
    dead: bool = False                # superseded by a newer attempt, or failed

    @property
    def index(self) -> int:
        return self.task.index

    @property
    def all_read(self) -> bool:
        return self.next_video == len(self.task.videos) and self.open_streams == 0


@dataclass(eq=False)
class _Stream:
    shard: _Shard
    video_id: str
    header: VideoHeader | None = None
    chunks: list[list[str]] = field(default_factory=list)
    delivered: int = 0


@dataclass(eq=False)
class _Work:
    """A chunk on its way to the writer."""

    shard: _Shard
    video_id: str
    ref: Any
    keys: list[str]
    attempts: int = 0


class Executor:
    """Runs the steps over shards on a Ray cluster (joined or started by :func:`init_ray`)."""

    def __init__(self, steps: Steps, res: ResourceConfig, batch_size: int = 1, progress: bool = True,
                 on_tick: Callable[[], None] | None = None):
        self.steps, self.res = steps, res
        self.batch = max(1, batch_size)
        self.progress = progress
        self.on_tick = on_tick or (lambda: None)
        self.actors: list = []
        self._resources: dict = {}

    def start_actors(self) -> list[dict]:
        """Start the matter actors (each loads its matter) and return their fingerprints.

        Raises ClusterError in one line when an actor cannot start (its constructor failed) or cannot be
        placed within ``stall_timeout`` (naming what it needs and what is free)."""
        res = self.res
        n, gpus = _num_actors(res)
        actor_cpus = res.actor_cpus if res.actor_cpus is not None else (0.5 if gpus else 1.0)
        _check_cpus(n * actor_cpus + res.reader_cpus + res.encode_cpus)
        self._resources = {"GPU": gpus, "CPU": actor_cpus}
        actor_cls = ray.remote(self.steps.matter).options(
            num_gpus=gpus, num_cpus=actor_cpus, max_restarts=res.max_restarts, max_task_retries=0,
            max_concurrency=2)
        self.actors = [actor_cls.remote(*self.steps.matter_args) for _ in range(n)]
        refs = [a.fingerprint.remote() for a in self.actors]
        deadline = time.monotonic() + max(1.0, res.stall_timeout)
        waiting = refs
        while waiting and time.monotonic() < deadline:
            self.on_tick()
            waiting = ray.wait(refs, num_returns=len(refs), timeout=1.0)[1]
        if waiting:
            late = [refs.index(r) for r in waiting]
            raise ClusterError(f"matter actor(s) {','.join(map(str, late))} could not be placed in "
                               f"{res.stall_timeout:g} s: each needs {self._needs()}; GPU {_free('GPU')}, "
                               f"CPU {_free('CPU')}")
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"a matter actor could not start: {_reason(exc)}") from None

    def _needs(self) -> str:
        return " and ".join(f"{v:g} {k}" for k, v in self._resources.items() if v) or "nothing"

    def run(self, tasks: list[ShardTask]) -> ExecResult:
        """Write every shard of ``tasks``; a shard that cannot be completed is reported, not raised."""
        if not self.actors:
            self.start_actors()
        return _Loop(self, tasks).run()

    def actor_records(self) -> list[dict]:
        """Where each matter actor ran and how busy it was (an actor that does not answer is recorded so)."""
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
        self.ex, self.steps, self.res = ex, steps, res
        self.actors = [_Actor(i, a) for i, a in enumerate(ex.actors)]
        n = len(self.actors)
        self.read_task = ray.remote(steps.read).options(
            num_cpus=res.reader_cpus, num_returns="streaming", max_retries=res.max_restarts,
            _generator_backpressure_num_objects=res.queue_depth + 2)
        encode, encode_args = steps.encode, steps.encode_args

        def deliver(chunk, results, writer, index: int, attempt: int) -> tuple[int, str | None]:
            """Encode a chunk after its matter and hand it to its shard writer: (items, writer error)."""
            items = encode(chunk, results, *encode_args)
            try:
                ray.get(writer.add.remote(index, attempt, *items))
            except ray.exceptions.RayError as exc:
                return len(items), _reason(exc)
            return len(items), None

        self.deliver_task = ray.remote(deliver).options(num_cpus=res.encode_cpus, max_retries=res.max_restarts)
        self.pool_cls = ray.remote(WriterPool).options(
            num_cpus=0, max_restarts=0, resources={res.writer_resource: 0.001} if res.writer_resource else None)
        n_writers = min(res.writers or max(1, math.ceil(n / 4)), max(1, len(tasks)))
        self.writers = [_Writer(self.pool_cls.remote(steps.writer)) for _ in range(n_writers)]
        self.pending: collections.deque[_Shard] = collections.deque()
        for t in tasks:
            self.pending.append(_Shard(t, 0, self.writers[t.index % n_writers]))
        self.active: list[_Shard] = []
        self.streams: dict[Any, _Stream] = {}
        self.ready: collections.deque[_Work] = collections.deque()
        self.in_actor: dict[Any, _Actor] = {}                      # results ref -> the actor computing it
        self.delivering: dict[Any, tuple[_Actor, _Work]] = {}     # deliver ref -> (actor, chunk)
        self.committing: dict[Any, _Shard] = {}
        self.pings: dict[Any, _Actor | _Writer] = {}
        self.headers: dict[str, VideoHeader] = {}                 # video -> its header (kept across attempts)
        self.crashes: collections.Counter[str] = collections.Counter()   # video -> reader crashes on it
        self.result = ExecResult()
        self.max_streams = max(1, res.read_ahead * n)
        self.last_progress = time.monotonic()
        self.bar = tqdm(desc="samples", unit="seg", disable=not ex.progress, smoothing=0.1)

    # -- reading --
    def _open_streams(self) -> None:
        while len(self.streams) < self.max_streams:
            shard = next((s for s in self.active if s.next_video < len(s.task.videos)), None)
            if shard is None:
                if not self.pending:
                    return
                shard = self.pending.popleft()
                if not shard.writer.alive:
                    shard.writer = self._live_writer()
                shard.writer.handle.open_shard.remote(shard.index, shard.attempt, shard.task.marker)
                self.active.append(shard)
                continue
            ref = shard.task.videos[shard.next_video]
            shard.next_video += 1
            if self.crashes[ref.video_id]:  # Ray already retried its reader max_restarts times
                self._give_up_video(shard, ref.video_id)
                continue
            shard.open_streams += 1
            self.streams[self.read_task.remote(ref, *self.steps.read_args)] = _Stream(shard, ref.video_id)

    def _give_up_video(self, shard: _Shard, video_id: str) -> None:
        """A video whose reader died on it every time: its keys become failed rows (a bad input)."""
        header = self.headers.get(video_id)
        keys = header.keys if header is not None else None
        why = f"the reader process died on this video {self.crashes[video_id]} times"
        log.error("%s: %s; recording its samples as failed", video_id, why)
        fails = self.steps.lost(video_id, keys, why)
        if header is not None:
            fails = [*header.failures, *fails]
        shard.writer.handle.add.remote(shard.index, shard.attempt, *fails)
        shard.samples += len(fails)

    def _pull(self, gen, stream: _Stream) -> None:
        try:
            item_ref = next(gen)
        except StopIteration:
            self._stream_ended(gen, stream)
            return
        if stream.shard.dead:
            return
        if stream.header is None:
            try:
                header = ray.get(item_ref)              # small: keys and plan failures
            except ray.exceptions.RayError as exc:
                self._stream_lost(gen, stream, exc)
                return
            if not isinstance(header, VideoHeader):
                raise TypeError(f"a reader stream of {stream.video_id} began with {type(header).__name__}")
            stream.header, stream.chunks = header, header.chunks()
            self.headers[stream.video_id] = header
            self._progress()
            if header.failures:
                stream.shard.writer.handle.add.remote(stream.shard.index, stream.shard.attempt, *header.failures)
                stream.shard.samples += len(header.failures)
            return
        if stream.delivered >= len(stream.chunks):        # an error after the last chunk: the stream died
            self._stream_lost(gen, stream, _fetch_error(item_ref))
            return
        keys = stream.chunks[stream.delivered]
        stream.delivered += 1
        stream.shard.pending += 1
        self.ready.append(_Work(stream.shard, stream.video_id, item_ref, keys))   # pixels: never fetched here
        self._progress()

    def _stream_ended(self, gen, stream: _Stream) -> None:
        del self.streams[gen]
        stream.shard.open_streams -= 1
        if stream.shard.dead:
            return
        if stream.header is None or stream.delivered < len(stream.chunks):
            self._restart(stream.shard, f"the reader of {stream.video_id} stopped early")

    def _stream_lost(self, gen, stream: _Stream, exc: BaseException | None) -> None:
        del self.streams[gen]
        ray.cancel(gen)
        stream.shard.open_streams -= 1
        if isinstance(exc, ray.exceptions.WorkerCrashedError):
            self.crashes[stream.video_id] += 1
        self._restart(stream.shard, f"the reader of {stream.video_id} was lost: {_reason(exc) if exc else '?'}")

    # -- the matter --
    def _dispatch(self) -> None:
        """Send ready chunks to the least-loaded actors that are up."""
        while self.ready:
            work = self.ready[0]
            if work.shard.dead:
                self.ready.popleft()
                continue
            up = [a for a in self.actors if a.state == "up" and a.load < self.res.queue_depth]
            if not up:
                return
            actor = min(up, key=lambda a: a.load)
            self.ready.popleft()
            # matter, then encode + hand to the writer, chained without a round trip through the driver
            results = actor.handle.refine.remote(work.ref)
            delivered = self.deliver_task.remote(work.ref, results, work.shard.writer.handle, work.shard.index,
                                                 work.shard.attempt)
            actor.load += 1
            self.in_actor[results] = actor
            self.delivering[delivered] = (actor, work)

    def _matted(self, ref) -> None:
        """An actor finished a chunk (or failed on it: the delivery says which): it can take another."""
        self.in_actor.pop(ref).load -= 1

    def _delivered(self, ref) -> None:
        actor, work = self.delivering.pop(ref)
        try:
            n, writer_error = ray.get(ref)
        except ray.exceptions.RayActorError as exc:       # the matter actor died or is restarting
            self._actor_lost(actor, exc)
            self._resend(work, f"matter actor {actor.index}: {_reason(exc)}")
            return
        except ray.exceptions.RayError as exc:            # the chunk's data was lost, its reader or encoder died
            if isinstance(exc, ray.exceptions.WorkerCrashedError) and isinstance(
                    _fetch_error(work.ref), ray.exceptions.WorkerCrashedError):
                self.crashes[work.video_id] += 1          # the reader's crash (an encoder's is no bad input)
            if not work.shard.dead:
                self._restart(work.shard, f"a chunk of {work.video_id} was lost: {_reason(exc)}")
            return
        self.bar.update(n)
        self._progress()
        if work.shard.dead:
            return
        work.shard.samples += n
        if writer_error is not None:
            self._writer_lost(work.shard.writer, RuntimeError(writer_error))
            return
        work.shard.pending -= 1

    def _resend(self, work: _Work, why: str) -> None:
        if work.shard.dead:
            return
        work.attempts += 1
        if work.attempts > self.res.max_restarts:
            self._fail(work.shard, f"a chunk of {work.video_id} failed on {work.attempts} matter actors: {why}")
            return
        log.warning("%s; sending a chunk of %s to another actor", why, work.video_id)
        self.ready.appendleft(work)

    def _actor_lost(self, actor: _Actor, exc: BaseException) -> None:
        if isinstance(exc, ray.exceptions.ActorDiedError):
            if actor.state != "dead":
                log.error("matter actor %d is gone for good: %s", actor.index, _reason(exc))
            actor.state, actor.why = "dead", _reason(exc)
            if all(a.state == "dead" for a in self.actors):
                self._fail_all("every matter actor died")
        elif actor.state == "up":
            log.warning("matter actor %d is down (%s); waiting for it to come back", actor.index, _reason(exc))
            actor.state, actor.why, actor.next_ping = "down", _reason(exc), time.monotonic() + PING_PERIOD_S

    # -- writing --
    def _maybe_commit(self) -> None:
        for shard in list(self.active):
            if shard.all_read and shard.pending == 0:
                self.active.remove(shard)
                ref = shard.writer.handle.commit.remote(shard.index, shard.attempt, shard.samples)
                self.committing[ref] = shard

    def _committed(self, ref) -> None:
        shard = self.committing.pop(ref)
        self._progress()
        try:
            self.result.done[shard.index] = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._writer_lost(shard.writer, exc)
            self._restart(shard, f"its shard writer was lost: {_reason(exc)}")
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if getattr(cause, "system", False):       # samples lost to system failures: redo the shard
                self._restart(shard, _reason(exc))
            else:
                self._fail(shard, _reason(exc))

    def _live_writer(self) -> _Writer:
        live = [w for w in self.writers if w.alive]
        if live:
            return min(live, key=lambda w: sum(s.writer is w for s in self.active))
        w = _Writer(self.pool_cls.remote(self.steps.writer))
        self.writers.append(w)
        return w

    def _writer_lost(self, writer: _Writer, exc: BaseException) -> None:
        if not writer.alive:
            return
        writer.alive = False
        log.error("a shard writer was lost: %s", _reason(exc))
        self.writers.append(_Writer(self.pool_cls.remote(self.steps.writer)))
        for shard in [s for s in self.active if s.writer is writer]:
            self._restart(shard, f"its shard writer was lost: {_reason(exc)}")

    # -- shards --
    def _drop(self, shard: _Shard) -> None:
        """Forget a shard attempt: its streams, queued chunks and open writer state."""
        shard.dead = True
        if shard in self.active:
            self.active.remove(shard)
        for gen, st in list(self.streams.items()):
            if st.shard is shard:
                del self.streams[gen]
                ray.cancel(gen)
        self.ready = collections.deque(w for w in self.ready if w.shard is not shard)
        if shard.writer.alive:
            shard.writer.handle.abort.remote(shard.index)

    def _restart(self, shard: _Shard, why: str) -> None:
        """Redo a shard that lost data (a new attempt, its videos read again), or fail it when out of retries."""
        if shard.dead:
            return
        self._drop(shard)
        if shard.attempt >= self.res.shard_retries:
            self._fail(shard, f"{why} (redone {shard.attempt} times)")
            return
        log.warning("shard %d: %s; redoing it (attempt %d of %d)", shard.index, why, shard.attempt + 2,
                    self.res.shard_retries + 1)
        self.result.redone[shard.index] = shard.attempt + 1
        writer = shard.writer if shard.writer.alive else self._live_writer()
        self.pending.appendleft(_Shard(shard.task, shard.attempt + 1, writer))

    def _fail(self, shard: _Shard, why: str) -> None:
        if shard.index in self.result.failed:
            return
        if not shard.dead:
            self._drop(shard)
        log.error("shard %d could not be completed: %s", shard.index, why)
        self.result.failed[shard.index] = why

    def _fail_all(self, reason: str, committing: bool = False) -> None:
        """Nothing can progress: every unfinished shard fails (shards being committed too, with
        ``committing``; else they may still finish); stop reading."""
        for shard in [*self.active, *self.pending, *(self.committing.values() if committing else ())]:
            self._fail(shard, reason)
        self.pending.clear()
        if committing:
            self.committing.clear()
        self.ready.clear()
        for gen in list(self.streams):
            ray.cancel(gen)
        self.streams.clear()
        self.delivering.clear()
        self.in_actor.clear()

    # -- health --
    def _progress(self) -> None:
        self.last_progress = time.monotonic()

    def _send_pings(self) -> None:
        now = time.monotonic()
        for a in self.actors:
            if a.state == "down" and a.ping is None and now >= a.next_ping:
                a.ping = a.handle.ping.remote()
                self.pings[a.ping] = a
        for w in self.writers:
            if w.alive and w.ping is None and now >= w.next_ping:
                w.ping = w.handle.ping.remote()
                self.pings[w.ping] = w

    def _pinged(self, ref) -> None:
        who = self.pings.pop(ref)
        who.ping = None
        try:
            ray.get(ref)
        except ray.exceptions.RayError as exc:
            if isinstance(who, _Writer):
                self._writer_lost(who, exc)
            else:
                self._actor_lost(who, exc)
                who.next_ping = time.monotonic() + PING_PERIOD_S
            return
        if isinstance(who, _Writer):
            who.next_ping = time.monotonic() + WRITER_PING_PERIOD_S
        elif who.state == "down":
            log.warning("matter actor %d is back", who.index)
            who.state, who.why = "up", ""
            self._progress()

    def _busy(self) -> bool:
        """Work is running somewhere that is up: not a stall, however long it takes (e.g. a compile)."""
        return any(a.state == "up" for a in self.in_actor.values()) or any(
            s.writer.alive for s in self.committing.values())

    def waiting_for(self) -> str:
        """What the run waits for, in one line."""
        parts = []
        for a in self.actors:
            if a.state == "down":
                parts.append(f"matter actor {a.index} down ({a.why}): needs {self.ex._needs()}; "
                             f"GPU {_free('GPU')}")
            elif a.state == "dead":
                parts.append(f"matter actor {a.index} dead")
        if self.streams or self.delivering:
            parts.append(f"{len(self.streams)} reader and {len(self.delivering)} encode task(s) pending: "
                         f"CPU {_free('CPU')}")
        if not parts:
            parts.append(f"{len(self.ready)} chunk(s) queued, no actor up")
        return "; ".join(parts)

    def _check_stall(self) -> bool:
        if self._busy() or time.monotonic() - self.last_progress < self.res.stall_timeout:
            return False
        why = f"no progress for {self.res.stall_timeout:g} s, waiting for: {self.waiting_for()}"
        log.error("%s", why)
        self.result.stalled = why
        self._fail_all(f"stalled ({why})", committing=True)
        return True

    # -- the loop --
    def _waitables(self) -> list:
        room = len(self.ready) < self.res.queue_depth * max(1, len(self.actors))
        streams = [g for g, s in self.streams.items() if room or s.header is None]
        return [*streams, *self.in_actor, *self.delivering, *self.committing, *self.pings]

    def _handle(self, ref) -> None:
        if ref in self.in_actor:
            self._matted(ref)
        elif ref in self.delivering:
            self._delivered(ref)
        elif ref in self.committing:
            self._committed(ref)
        elif ref in self.pings:
            self._pinged(ref)
        elif ref in self.streams:
            self._pull(ref, self.streams[ref])

    def run(self) -> ExecResult:
        t0 = time.perf_counter()
        try:
            while self.pending or self.active or self.streams or self.committing or self.in_actor or self.delivering:
                self.ex.on_tick()
                self._open_streams()
                self._dispatch()
                self._maybe_commit()
                self._send_pings()
                if self._check_stall():
                    break
                waitables = self._waitables()
                if not waitables:
                    time.sleep(0.2)
                    continue
                ready, rest = ray.wait(waitables, num_returns=1, timeout=1.0, fetch_local=False)
                if ready and rest:  # take everything else that is ready too: fewer driver round trips
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
                for ref in ready:
                    self._handle(ref)
        finally:
            self.bar.close()
            for w in self.writers:  # every shard is committed or failed: their spill files go with them
                ray.kill(w.handle, no_restart=True)
        self.result.wall_s = time.perf_counter() - t0
        return self.result


def _fetch_error(ref) -> BaseException | None:
    """The error a stream item holds (an item after the announced chunks is the stream's failure)."""
    try:
        ray.get(ref, timeout=10)
    except ray.exceptions.RayError as exc:
        return exc
    return None


def _actor_record(actor) -> dict:
    """Where an actor ran and how busy it was; an actor that does not answer is recorded as such."""
    try:
        info, stats = ray.get([actor.info.remote(), actor.stats.remote()], timeout=10)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        return {"info": {"dead": _reason(exc)}, "stats": {"busy_s": 0.0, "idle_s": 0.0}}
    return {"info": info, "stats": stats}

