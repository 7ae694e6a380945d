"""The executor: everything Ray. It joins or starts the cluster, starts the matter actors and the shard
writers, and runs the scheduling loop that hands whole videos to video tasks:

    video task (per video, bound to a matter actor): read -> matter (actor per GPU) -> encoder (actors, 2 per GPU) -> writer (actor)

It knows the steps only through ``pipeline.protocol``. The driver never sees a chunk: a video task reads
its video and, per chunk, submits the matter on its actor and, chained behind it, the encode on an encoder
actor, which hands the samples to the shard's writer itself; the driver gets four small items per video ("started",
the header with the planned keys, "read", then an outcome), so its work is per video, not per chunk or segment. Bounded
queues keep the object store bounded: at most ``read_ahead`` video tasks feed each actor, and each
video task keeps at most ``queue_depth`` of its chunks queued on the actor.

Faults (nodes come and go):

- a video whose matter actor died or is restarting goes back to the queue and runs, from its first
  chunk that did not reach the writer, on another live actor; an actor that comes back (restarted, or
  its GPU returned with a node) is used again; a writer drops a key it already holds, so a chunk sent
  twice never makes a duplicate;
- the driver pings every actor that has video tasks bound to it (every 2 s); when one is not up, all
  its video tasks are cancelled and their videos sent to other actors: a video task's call queued
  before its process knew that the actor was restarting would wait for the actor, for good;
- a chunk whose data or encoder was lost, a shard writer lost with its node, or a shard whose writer
  recorded system failures is redone from its videos, in the same run, up to ``shard_retries`` times;
  a shard that lost samples is never marked done;
- a video whose video task process dies on it every time is recorded as failed rows (``Steps.lost``);
  a reader that raises is bad input of its video too: the keys it did not deliver are failed rows;
- a stall watchdog ends a run in which nothing progresses (no video task reports, no writer takes a
  sample, no actor is running a chunk) for ``stall_timeout`` seconds with one line saying what it
  waits for; every unfinished shard is reported failed.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import ray
from tqdm import tqdm

from models.options import int_at_least, number_at_least, option
from pipeline.protocol import Chunk, Steps, VideoHeader

log = logging.getLogger(__name__)

PING_PERIOD_S = 2.0          # how often a matter actor with work bound to it (or one that is down) is asked
WRITER_PING_PERIOD_S = 5.0
#: a matter actor's concurrency group for ``ping`` and ``running``: they answer while both of its threads are
#: in chunks (a long first call: compile, autotune), rather than after one of them ends
HEALTH = "health"
HAND_OVER_S = 1.0            # an encode task hands its samples to the writer at least this often
#: a video task whose process has not begun it, or a writer that has not answered its first ping (a
#: process being started on a loaded node), is Ray's work, not a stall, for this long after its submission
#: (Ray's own limit for a worker process to register is 60 s); one that never starts (no CPU left for it)
#: is then a stall like any other
START_GRACE_S = 60.0


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
    encoders_per_actor: int = option(2, "encoder actors per matter actor, fewer where the CPUs left after the "
                                        "matter actors and one video task do not fit them (one encoder actor "
                                        "at least)", parse=int_at_least(1))
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
    ordered): they wait for it. A key an open shard already holds is dropped: a chunk sent again
    (its matter actor was lost, its encode task retried) never makes a duplicate, and the commit's
    count check still catches a key that never came. Items for an attempt that was committed or aborted
    are dropped (a video task the driver cancelled can still hand over a chunk). ``ping`` answers how
    many samples the pool has taken so far: the driver's sign that encoders make progress."""

    def __init__(self, factory: Callable[[int, dict], Any]):
        self.factory = factory
        self.open: dict[int, tuple[int, Any, set]] = {}
        self.early: dict[tuple[int, int], list] = {}   # (index, attempt) -> items that came before open_shard
        self.closed: set[tuple[int, int]] = set()      # (index, attempt) committed or aborted
        self.taken = 0

    def ping(self) -> int:
        return self.taken

    def _writer(self, index: int, attempt: int):
        held = self.open.get(index)
        return held[1] if held is not None and held[0] == attempt else None

    def open_shard(self, index: int, attempt: int, marker: dict) -> None:
        self.abort(index)
        self.open[index] = (attempt, self.factory(index, marker), set())
        for key in [k for k in self.early if k[0] == index and k[1] <= attempt]:
            items = self.early.pop(key)
            if key[1] == attempt:
                self.add(index, attempt, *items)

    def add(self, index: int, attempt: int, *items) -> None:
        """Items by value (e.g. failures): never raises, so no outcome is lost unseen."""
        if (index, attempt) in self.closed:
            return
        held = self.open.get(index)
        if held is None or held[0] < attempt:      # not opened yet: keep them for open_shard
            self.early.setdefault((index, attempt), []).extend(items)
            return
        if held[0] != attempt:
            return
        w, seen = held[1], held[2]
        for item in items:
            key = getattr(item, "key", None)
            if key in seen:
                continue
            seen.add(key)
            self.taken += 1
            try:
                w.add(item)
            except Exception as exc:  # noqa: BLE001 - recorded: the shard will not be marked done
                w.add_system_failure(key or "?", f"writer: {exc!r}")

    def commit(self, index: int, attempt: int, expected: int):
        """Commit a shard that holds exactly the ``expected`` samples the driver routed to it."""
        w = self._writer(index, attempt)
        if w is None:
            raise RuntimeError(f"shard {index} attempt {attempt} is not open on this writer")
        if w.count != expected:
            w.add_system_failure("?", f"the writer holds {w.count} samples, {expected} were sent")
        del self.open[index]
        self.closed.add((index, attempt))
        return w.commit()

    def abort(self, index: int) -> None:
        held = self.open.pop(index, None)
        if held is not None:
            self.closed.add((index, held[0]))
            held[1].close()


# --- the video task: read -> matter -> encode -> writer, on the cluster ------------------------------


@dataclass
class VideoOutcome:
    """What a video task reports when it ends (the last item of its stream; small).

    ``resume``: the first chunk that did not reach the writer because its matter actor was lost (the
    driver sends the video from there to another actor); ``lost``: a chunk's data or its encoder was
    lost (the shard is redone); ``writer_error``: the shard writer did not take the samples."""

    items: int = 0
    resume: int | None = None
    actor_error: str = ""
    actor_dead: bool = False
    lost: str | None = None
    writer_error: str | None = None


def _poll(refs: list, n: int | None = None) -> None:
    """Wait until ``n`` (default all) of ``refs`` are ready, polling: a blocking ``ray.get``/``ray.wait``
    in a task hands its CPU back to the scheduler, which then starts more encode tasks, each a worker
    process (on a small node, worker processes were started and killed over and over)."""
    n = len(refs) if n is None else n
    pause = 0.001
    while len(ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0]) < n:
        time.sleep(pause)
        pause = min(0.05, pause * 2)


@dataclass
class VideoStarted:
    """The first item of a video task's stream: its process runs it (until then the task is Ray's: waiting
    for resources, a worker process being started)."""


@dataclass
class VideoRead:
    """The middle item of a video task's stream: its video is read (every chunk submitted); what is left
    is waiting for the matter and the encoders, so its actor may take the next video meanwhile."""


def run_video(read: Callable, read_args: tuple, lost: Callable, queue_depth: int, retries: int, redeliver, ref,
              start_chunk: int, actor, encoder, writer, index: int, attempt: int) -> Iterator:
    """The stream of one video task: :class:`VideoStarted`, its VideoHeader, :class:`VideoRead`, then a
    :class:`VideoOutcome`.

    Reads the video (chunks from ``start_chunk`` on) and, per chunk, submits the matter on ``actor`` and,
    chained behind it, the encode on ``encoder``, which hands the samples to the shard's writer itself: the driver
    sees four small items per video, never a chunk. At most ``queue_depth`` chunks of this video wait on
    the actor. A reader that raises is bad input of its video, as ``read_video`` treats an unexpected
    error: the keys it did not deliver become failed rows (``lost`` with the exception). ``redeliver``: the
    remote function that encodes a chunk again, in a process of its own, after its encoder was lost."""
    yield VideoStarted()
    out = VideoOutcome()
    send = _Sender(redeliver, writer, index, attempt, retries, actor._actor_id.hex())
    adds: list = []
    stream = read(ref, *read_args, start_chunk=start_chunk)
    try:
        header = next(stream)
    except Exception as exc:  # noqa: BLE001 - bad input of this video: one row (a resumed stream: lost data)
        if start_chunk:
            out.lost = f"its reader raised when resumed: {exc!r}"
            yield out
            return
        vid = getattr(ref, "video_id", "?")
        fails = lost(vid, None, f"the reader raised {type(exc).__name__}: {exc}", exc)
        header = VideoHeader(vid, [], fails, 1)
        yield header
        adds.append(writer.add.remote(index, attempt, *fails))
        stream = iter(())
    else:
        if not isinstance(header, VideoHeader):
            raise TypeError(f"a reader stream of {getattr(ref, 'video_id', '?')} began with {type(header).__name__}")
        yield header
        if header.failures:
            adds.append(writer.add.remote(index, attempt, *header.failures))
    chunk_keys = header.chunks()
    matting: list = []       # refine refs of chunks not yet matted
    delivering: list = []    # (chunk number, deliver ref)
    c = start_chunk
    while True:
        try:
            chunk = next(stream)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - the rest of this video's keys become failed rows
            keys = [k for ks in chunk_keys[c:] for k in ks]
            why = f"the reader raised {type(exc).__name__}: {exc}"
            adds.append(writer.add.remote(index, attempt, *lost(header.video_id, keys, why, exc)))
            break
        chunk_ref = ray.put(chunk)
        del chunk
        results = actor.refine.remote(chunk_ref)
        delivering.append(_Delivery(c, chunk_ref, results, encoder.deliver.remote(chunk_ref, results, writer, index,
                                                                                 attempt)))
        matting.append(results)
        c += 1
        if len(matting) >= queue_depth:          # backpressure: this video's chunks queued on the actor
            _poll(matting, len(matting) - queue_depth + 1)
            matting = ray.wait(matting, num_returns=len(matting), timeout=0, fetch_local=False)[1]
        while len(delivering) > queue_depth:     # and encodes in flight
            send.settle(delivering.pop(0), out)
    yield VideoRead()
    while delivering:
        send.settle(delivering.pop(0), out)
    try:
        _poll(adds)
        ray.get(adds)
    except ray.exceptions.RayError as exc:
        out.writer_error = out.writer_error or _reason(exc)
    yield out


@dataclass
class _Delivery:
    chunk: int
    chunk_ref: Any
    results: Any
    ref: Any
    tries: int = 1


@dataclass
class _Sender:
    """Settles a video task's deliveries. A delivery whose encoder process was lost (not the matter's
    actor) is encoded again by ``redeliver``, a task in a process of its own, up to ``retries`` times,
    then the chunk counts as lost: a chunk that kills its encoder every time then kills only its own
    processes, and the chunks lost with it on the shared encoder are encoded again, not lost with it."""

    redeliver: Any
    writer: Any
    index: int
    attempt: int
    retries: int
    matter_id: str

    def settle(self, d: _Delivery, out: VideoOutcome) -> None:
        while True:
            try:
                _poll([d.ref])
                n, writer_error = ray.get(d.ref)
            except ray.exceptions.RayActorError as exc:     # the matter actor died or is restarting, or the encoder
                if getattr(exc, "actor_id", None) in (None, self.matter_id):
                    out.resume = d.chunk if out.resume is None else min(out.resume, d.chunk)
                    out.actor_error = out.actor_error or _reason(exc)
                    out.actor_dead = out.actor_dead or isinstance(exc, ray.exceptions.ActorDiedError)
                    return
                why = exc
            except ray.exceptions.WorkerCrashedError as exc:  # the process of a redelivery died
                why = exc
            except ray.exceptions.RayError as exc:          # the chunk's data was lost
                out.lost = out.lost or _reason(exc)
                return
            else:
                out.items += n
                if writer_error is not None:
                    out.writer_error = out.writer_error or writer_error
                return
            if d.tries > self.retries:
                out.lost = out.lost or _reason(why)         # its encoder died every time: the shard is redone
                return
            d.tries += 1
            d.ref = self.redeliver.remote(d.chunk_ref, d.results, self.writer, self.index, self.attempt)


def deliver(encode: Callable, encode_args: tuple, chunk, results, writer, index: int, attempt: int
            ) -> tuple[int, str | None]:
    """Encode a chunk after its matter, a sample at a time, handing the samples to its shard writer at
    least every ``HAND_OVER_S`` seconds (a slow encode shows progress in the writer's count, the driver's
    sign of it; a fast one makes one call per chunk): (items, writer error)."""
    if len(results) != len(chunk.items):
        encode(chunk, results, *encode_args)        # the step's own error for a wrong count
        raise ValueError(f"{len(results)} matter results for a chunk of {len(chunk.items)}")
    adds, done, last = [], [], time.monotonic()
    for item, result in zip(chunk.items, results):
        done += encode(Chunk(chunk.video_id, [item]), [result], *encode_args)
        if time.monotonic() - last >= HAND_OVER_S:
            adds.append(writer.add.remote(index, attempt, *done))
            done, last = [], time.monotonic()
    if done:
        adds.append(writer.add.remote(index, attempt, *done))
    try:
        _poll(adds)
        ray.get(adds)
    except ray.exceptions.RayError as exc:
        return len(chunk.items), _reason(exc)
    return len(chunk.items), None


class Encoder:
    """An encoder process (a Ray actor, a few per matter actor): encodes chunks after their matter and hands
    them to their shard writers (:func:`deliver`). Long-lived, so that video tasks on any node reuse
    its process; encode tasks owned by many video tasks had their workers started and killed over and over."""

    def __init__(self, encode: Callable, encode_args: tuple):
        self.encode, self.encode_args = encode, encode_args

    def ping(self) -> bool:
        return True

    def deliver(self, chunk, results, writer, index: int, attempt: int) -> tuple[int, str | None]:
        return deliver(self.encode, self.encode_args, chunk, results, writer, index, attempt)


# --- the scheduling loop --------------------------------------------------------------------------


@dataclass(eq=False)
class _Writer:
    handle: Any
    alive: bool = True
    ping: Any = None
    next_ping: float = 0.0
    taken: int = 0                    # samples it had taken at its last ping
    created: float = field(default_factory=time.monotonic)
    up: bool = False                  # it answered a ping (until then its process is starting)


@dataclass(eq=False)
class _Actor:
    index: int
    handle: Any
    state: str = "up"                 # up | down (restarting or unreachable) | dead (for good)
    load: int = 0                     # video tasks reading for it
    finishing: int = 0                # video tasks done reading, waiting for its mattes and their encoders
    ping: Any = None
    next_ping: float = 0.0
    why: str = ""


@dataclass(eq=False)
class _Shard:
    task: ShardTask
    attempt: int
    writer: _Writer
    next_video: int = 0
    open_videos: int = 0              # videos handed out or queued, not yet finished
    expected: int = 0                 # samples (ok or failed) the writer must hold: from the headers
    dead: bool = False                # superseded by a newer attempt, or failed

    @property
    def index(self) -> int:
        return self.task.index

    @property
    def all_read(self) -> bool:
        return self.next_video == len(self.task.videos) and self.open_videos == 0


@dataclass(eq=False)
class _Video:
    """A video of a shard attempt on its way through a video task (again, from ``start_chunk``, when its
    actor was lost)."""

    shard: _Shard
    ref: Any
    start_chunk: int = 0
    attempts: int = 0                 # times sent to another actor
    failed_on: set = field(default_factory=set)   # indices of the actors it was lost on
    counted: bool = False             # its header's samples are in shard.expected


@dataclass(eq=False)
class _Task:
    video: _Video
    actor: _Actor
    reading: bool = True
    next_item: Any = None             # the ref of its stream's next item (waited on instead of the stream)
    submitted: float = field(default_factory=time.monotonic)
    started: bool = False             # its process runs it (it sent VideoStarted)


class Executor:
    """Runs the steps over shards on a Ray cluster (joined or started by :func:`init_ray`)."""

    def __init__(self, steps: Steps, res: ResourceConfig, batch_size: int = 1, progress: bool = True,
                 on_tick: Callable[[], None] | None = None):
        self.steps, self.res = steps, res
        self.batch = max(1, batch_size)
        self.progress = progress
        self.on_tick = on_tick or (lambda: None)
        self.actors: list = []
        self.encoders: list = []
        self._resources: dict = {}

    def start_actors(self) -> list[dict]:
        """Start the matter actors (each loads its matter) and the encoder actors; return the matter
        actors' fingerprints once all are up (the run's stall watchdog then never waits on a process start).

        Raises ClusterError in one line when an actor cannot start (its constructor failed) or cannot be
        placed within ``stall_timeout`` (naming what it needs and what is free)."""
        res = self.res
        n, gpus = _num_actors(res)
        actor_cpus = res.actor_cpus if res.actor_cpus is not None else (0.5 if gpus else 1.0)
        _check_cpus(n * actor_cpus + res.reader_cpus + res.encode_cpus)
        self._resources = {"GPU": gpus, "CPU": actor_cpus}
        actor_cls = ray.remote(  # concurrency groups are an option of the class, not of .options()
            num_gpus=gpus, num_cpus=actor_cpus, max_restarts=res.max_restarts, max_task_retries=0,
            max_concurrency=2, concurrency_groups={HEALTH: 1})(self.steps.matter)
        self.actors = [actor_cls.remote(*self.steps.matter_args) for _ in range(n)]
        refs = [a.fingerprint.remote() for a in self.actors]
        encoder_cls = ray.remote(Encoder).options(num_cpus=res.encode_cpus, max_restarts=-1, max_task_retries=0)
        # --encoders-per-actor, as many as leave a CPU share for one video task (each reserves --encode-cpus)
        spare = ray.cluster_resources().get("CPU", 0) - n * actor_cpus - res.reader_cpus
        wanted = res.encoders_per_actor * max(1, n)
        fit = int(spare // res.encode_cpus) if res.encode_cpus > 0 else wanted
        self.encoders = [encoder_cls.remote(self.steps.encode, self.steps.encode_args)
                         for _ in range(max(1, min(wanted, fit)))]
        pings = [e.ping.remote() for e in self.encoders]
        deadline = time.monotonic() + max(1.0, res.stall_timeout)
        waiting = [*refs, *pings]
        while waiting and time.monotonic() < deadline:
            self.on_tick()
            waiting = ray.wait(waiting, num_returns=len(waiting), timeout=1.0)[1]
        late = [refs.index(r) for r in waiting if r in refs]
        if late:
            raise ClusterError(f"matter actor(s) {','.join(map(str, late))} could not be placed in "
                               f"{res.stall_timeout:g} s: each needs {self._needs()}; GPU {_free('GPU')}, "
                               f"CPU {_free('CPU')}")
        if waiting:
            raise ClusterError(f"{len(waiting)} encoder actor(s) could not be placed in {res.stall_timeout:g} s: "
                               f"each needs {res.encode_cpus:g} CPU; CPU {_free('CPU')}")
        try:
            ray.get(pings)
            return ray.get(refs)
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"a matter or encoder actor could not start: {_reason(exc)}") from None

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
        """Stop the matter and encoder actors (frees their GPUs/CPUs for the next job in this Ray session)."""
        for a in [*self.actors, *self.encoders]:
            ray.kill(a, no_restart=True)
        self.actors, self.encoders = [], []


class _Loop:
    """The driver's scheduling loop of one :meth:`Executor.run`: it hands whole videos to video tasks
    (one per video, bound to a matter actor) and sees four small items per video, never a chunk."""

    def __init__(self, ex: Executor, tasks: list[ShardTask]):
        steps, res = ex.steps, ex.res
        self.ex, self.steps, self.res = ex, steps, res
        self.actors = [_Actor(i, a) for i, a in enumerate(ex.actors)]
        n = len(self.actors)
        encode, encode_args = steps.encode, steps.encode_args
        read, read_args, lost, depth = steps.read, steps.read_args, steps.lost, res.queue_depth
        self.encoders = ex.encoders
        self.n_submitted = 0

        retries = res.max_restarts

        def redeliver_chunk(chunk, results, writer, index: int, attempt: int) -> tuple[int, str | None]:
            return deliver(encode, encode_args, chunk, results, writer, index, attempt)

        # no CPU reserved: it runs only after an encoder was lost, and must not wait behind the video tasks
        # that wait for it
        redeliver = ray.remote(redeliver_chunk).options(num_cpus=0, max_retries=0)

        def video(ref, start_chunk: int, actor, encoder, writer, index: int, attempt: int):
            yield from run_video(read, read_args, lost, depth, retries, redeliver, ref, start_chunk, actor, encoder,
                                 writer, index, attempt)

        self.video_task = ray.remote(video).options(
            num_cpus=res.reader_cpus, num_returns="streaming", max_retries=res.max_restarts)
        self.pool_cls = ray.remote(WriterPool).options(
            num_cpus=0, max_restarts=0, resources={res.writer_resource: 0.001} if res.writer_resource else None)
        n_writers = min(res.writers or max(1, math.ceil(n / 4)), max(1, len(tasks)))
        self.writers = [_Writer(self.pool_cls.remote(steps.writer)) for _ in range(n_writers)]
        self.pending: collections.deque[_Shard] = collections.deque()
        for t in tasks:
            self.pending.append(_Shard(t, 0, self.writers[t.index % n_writers]))
        self.active: list[_Shard] = []
        self.queue: collections.deque[_Video] = collections.deque()   # videos sent again (their actor was lost)
        self.tasks: dict[Any, _Task] = {}                            # video task stream -> its task
        self.next_items: dict[Any, Any] = {}                         # next item's ref -> its stream
        self.committing: dict[Any, _Shard] = {}
        self.pings: dict[Any, _Actor | _Writer] = {}
        self.headers: dict[str, VideoHeader] = {}                 # video -> its header (kept across attempts)
        self.crashes: collections.Counter[str] = collections.Counter()   # video -> reader crashes on it
        self.result = ExecResult()
        self.last_progress = time.monotonic()
        self.suspect: float | None = None     # when the watchdog first found nothing progressing nor running
        self.bar = tqdm(desc="samples", unit="seg", disable=not ex.progress, smoothing=0.1)

    # -- handing out videos --
    def _fill(self) -> None:
        """Give each actor that is up up to ``read_ahead`` videos at once (resent videos first)."""
        while True:
            video = self._next_video()
            if video is None:
                return
            actor = self._pick(video)
            if actor is None:
                self.queue.appendleft(video)
                return
            self._submit(video, actor)

    def _next_video(self) -> _Video | None:
        while self.queue:
            video = self.queue.popleft()
            if not video.shard.dead:
                return video
        while True:
            shard = next((s for s in self.active if s.next_video < len(s.task.videos)), None)
            if shard is None:
                if not self.pending or not self._room():
                    return None
                shard = self.pending.popleft()
                if not shard.writer.alive:
                    shard.writer = self._live_writer()
                shard.writer.handle.open_shard.remote(shard.index, shard.attempt, shard.task.marker)
                self.active.append(shard)
                continue
            ref = shard.task.videos[shard.next_video]
            shard.next_video += 1
            if self.crashes[ref.video_id]:  # Ray already retried its video task max_restarts times
                self._give_up_video(shard, ref.video_id)
                continue
            shard.open_videos += 1
            return _Video(shard, ref)

    def _has_room(self, a: _Actor) -> bool:
        """At most ``read_ahead`` videos being read for an actor, and one more waiting for it to finish."""
        return a.load < self.res.read_ahead and a.load + a.finishing <= self.res.read_ahead

    def _room(self) -> bool:
        return any(a.state == "up" and self._has_room(a) for a in self.actors)

    def _pick(self, video: _Video) -> _Actor | None:
        """The least-loaded actor that is up and has room; one the video already failed on only when no
        other actor is up at all (a lone actor that restarted)."""
        up = [a for a in self.actors if a.state == "up"]
        fresh = [a for a in up if a.index not in video.failed_on] or up
        room = [a for a in fresh if self._has_room(a)]
        return min(room, key=lambda a: a.load) if room else None

    def _submit(self, video: _Video, actor: _Actor) -> None:
        shard = video.shard
        encoder = self.encoders[self.n_submitted % len(self.encoders)]   # round robin
        self.n_submitted += 1
        gen = self.video_task.remote(video.ref, video.start_chunk, actor.handle, encoder, shard.writer.handle,
                                     shard.index, shard.attempt)
        actor.load += 1
        self.tasks[gen] = task = _Task(video, actor)
        self._expect(gen, task)

    def _give_up_video(self, shard: _Shard, video_id: str) -> None:
        """A video whose video task died on it every time: its keys become failed rows (a bad input)."""
        header = self.headers.get(video_id)
        keys = header.keys if header is not None else None
        why = f"the reader process died on this video {self.crashes[video_id]} times"
        log.error("%s: %s; recording its samples as failed", video_id, why)
        fails = self.steps.lost(video_id, keys, why)
        if header is not None:
            fails = [*header.failures, *fails]
        shard.writer.handle.add.remote(shard.index, shard.attempt, *fails)
        shard.expected += len(fails)

    # -- what the video tasks say --
    def _expect(self, gen, task: _Task) -> None:
        """Wait for a stream's next item through its ref: ``ray.wait`` on a plain ref costs a small fraction of
        a wait on the stream itself, and the loop waits on every stream in flight each time round (a
        thousand of them on 512 GPUs)."""
        task.next_item = gen._get_next_ref_n(1)[0]
        self.next_items[task.next_item] = gen

    def _pull(self, gen, task: _Task) -> None:
        self.next_items.pop(task.next_item, None)
        try:
            item_ref = next(gen)
        except StopIteration:               # ended without its outcome (it was cancelled)
            self._task_ended(gen, task, RuntimeError("the video task ended early"))
            return
        try:
            item = ray.get(item_ref)        # small: a header or an outcome
        except ray.exceptions.RayError as exc:
            self._task_ended(gen, task, exc)
            return
        video = task.video
        if video.shard.dead:
            self._forget(gen, task)
            return
        self._progress()
        if isinstance(item, VideoStarted):
            task.started = True
            self._expect(gen, task)
            return
        if isinstance(item, VideoHeader):
            self.headers[item.video_id] = item
            if not video.counted:
                video.counted = True
                video.shard.expected += len(item.keys) + len(item.failures)
            self._expect(gen, task)
            return
        if isinstance(item, VideoRead):
            if task.reading:
                task.reading = False
                task.actor.load -= 1
                task.actor.finishing += 1
            self._expect(gen, task)
            return
        self._forget(gen, task)
        self._outcome(task, item)

    def _forget(self, gen, task: _Task) -> None:
        self.next_items.pop(task.next_item, None)
        if self.tasks.pop(gen, None) is not None:
            if task.reading:
                task.actor.load -= 1
            else:
                task.actor.finishing -= 1
            task.video.shard.open_videos -= 1

    def _task_ended(self, gen, task: _Task, exc: BaseException) -> None:
        """The video task failed as a whole: its process died every time Ray retried it (a reader crash:
        the next attempt of the shard gives the video up), or it was lost otherwise."""
        self._forget(gen, task)
        ray.cancel(gen)
        video = task.video
        if video.shard.dead:
            return
        if isinstance(exc, ray.exceptions.WorkerCrashedError):
            self.crashes[video.ref.video_id] += 1
        self._restart(video.shard, f"the video task of {video.ref.video_id} was lost: {_reason(exc)}")

    def _outcome(self, task: _Task, out: VideoOutcome) -> None:
        video, actor = task.video, task.actor
        self.bar.update(out.items)
        if out.writer_error is not None:
            self._writer_lost(video.shard.writer, RuntimeError(out.writer_error))
        elif out.lost is not None:
            self._restart(video.shard, f"a chunk of {video.ref.video_id} was lost: {out.lost}")
        elif out.resume is not None:
            self._actor_lost(actor, out.actor_error, out.actor_dead)
            self._resend(video, out.resume, actor, f"matter actor {actor.index}: {out.actor_error}")

    def _resend(self, video: _Video, start_chunk: int, actor: _Actor, why: str) -> None:
        """Send the rest of a video whose matter actor was lost to another actor (bounded)."""
        if video.shard.dead:
            return
        video.attempts += 1
        if video.attempts > self.res.max_restarts:
            self._fail(video.shard, f"a chunk of {video.ref.video_id} failed on {video.attempts} matter actors: {why}")
            return
        log.warning("%s; sending %s from chunk %d to another actor", why, video.ref.video_id, start_chunk)
        video.failed_on.add(actor.index)
        video.start_chunk = start_chunk
        video.shard.open_videos += 1
        self.queue.appendleft(video)

    def _actor_lost(self, actor: _Actor, why: str, dead: bool) -> None:
        """An actor failed a chunk or a ping: it takes nothing more until a ping finds it up again (or
        never), and every video task still bound to it is sent to another actor (:meth:`_rescue`)."""
        if dead:
            if actor.state != "dead":
                log.error("matter actor %d is gone for good: %s", actor.index, why)
            actor.state, actor.why = "dead", why
            if all(a.state == "dead" for a in self.actors):
                self._fail_all("every matter actor died")
                return
        elif actor.state == "up":
            log.warning("matter actor %d is down (%s); waiting for it to come back", actor.index, why)
            actor.state, actor.why, actor.next_ping = "down", why, time.monotonic() + PING_PERIOD_S
        self._rescue(actor)

    def _rescue(self, actor: _Actor) -> None:
        """Cancel the video tasks bound to an actor that is not up and send their videos to other actors,
        from the chunk each was sent from (the writer drops the keys it already holds).

        Such a task may never report: a call is queued until the calling process knows where the actor
        is, and when it learns that the actor is restarting, Ray fails only the calls made after that;
        the queued one waits until the actor is back, for good when its GPU went with its node. A video
        task's process often learns late (a new process, or Ray's rerun of a video task whose node died),
        so only the driver, which created the actors and whose calls to a restarting actor fail at once,
        can tell (by a ping, or a chunk another video task lost on the actor)."""
        for gen, task in [(g, t) for g, t in self.tasks.items() if t.actor is actor]:
            self._forget(gen, task)
            ray.cancel(gen)
            self._resend(task.video, task.video.start_chunk, actor, f"matter actor {actor.index}: {actor.why}")

    # -- writing --
    def _maybe_commit(self) -> None:
        for shard in list(self.active):
            if shard.all_read:
                self.active.remove(shard)
                ref = shard.writer.handle.commit.remote(shard.index, shard.attempt, shard.expected)
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
        """Forget a shard attempt: its video tasks (cancelled), queued videos and open writer state."""
        shard.dead = True
        if shard in self.active:
            self.active.remove(shard)
        for gen, task in list(self.tasks.items()):
            if task.video.shard is shard:
                self._forget(gen, task)
                ray.cancel(gen)
        self.queue = collections.deque(v for v in self.queue if v.shard is not shard)
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
        self.queue.clear()
        for gen, task in list(self.tasks.items()):
            self._forget(gen, task)
            ray.cancel(gen)

    # -- health --
    def _progress(self) -> None:
        self.last_progress = time.monotonic()

    def _send_pings(self) -> None:
        now = time.monotonic()
        for a in self.actors:         # down: is it back? up with work bound: is it still up?
            if a.ping is None and now >= a.next_ping and (
                    a.state == "down" or (a.state == "up" and a.load + a.finishing > 0)):
                a.ping = a.handle.ping.options(concurrency_group=HEALTH).remote()
                self.pings[a.ping] = a
        for w in self.writers:
            if w.alive and w.ping is None and now >= w.next_ping:
                w.ping = w.handle.ping.remote()
                self.pings[w.ping] = w

    def _pinged(self, ref) -> None:
        who = self.pings.pop(ref)
        who.ping = None
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if isinstance(who, _Writer):
                self._writer_lost(who, exc)
            else:
                self._actor_lost(who, _reason(exc), isinstance(exc, ray.exceptions.ActorDiedError))
                who.next_ping = time.monotonic() + PING_PERIOD_S
            return
        if isinstance(who, _Writer):
            who.next_ping = time.monotonic() + self._writer_ping_period()
            who.up = True                       # its process runs (a start is not progress: see _busy)
            if answer != who.taken:             # encoders handed it samples: progress, however slow
                who.taken = answer
                self._progress()
            return
        who.next_ping = time.monotonic() + PING_PERIOD_S
        if who.state == "down":
            log.warning("matter actor %d is back", who.index)
            who.state, who.why = "up", ""
            self._progress()

    def _writer_ping_period(self) -> float:
        return min(WRITER_PING_PERIOD_S, self.res.stall_timeout / 4)

    def _busy(self) -> bool:
        """Work is running somewhere that is up: not a stall, however long it takes (a compile on a
        matter actor, a commit), or a video task or writer is starting (within ``START_GRACE_S``). Asked only
        when nothing else progressed for ``stall_timeout``."""
        if any(s.writer.alive for s in self.committing.values()):
            return True
        now = time.monotonic()
        if any(not t.started and now - t.submitted < START_GRACE_S for t in self.tasks.values()) or any(
                w.alive and not w.up and now - w.created < START_GRACE_S for w in self.writers):
            return True             # a process being started on a loaded node, within Ray's own bound
        asked = {a.handle.running.options(concurrency_group=HEALTH).remote(): a
                 for a in self.actors if a.state == "up" and a.load + a.finishing > 0}
        answered, late = ray.wait(list(asked), num_returns=len(asked), timeout=10) if asked else ([], [])
        busy = bool(late)   # its process does not answer in time: it is up (pings say so), so it is working
        for ref in answered:
            try:
                busy = bool(ray.get(ref)) or busy
            except ray.exceptions.RayActorError as exc:   # it went unseen: its videos go to other actors
                self._actor_lost(asked[ref], _reason(exc), isinstance(exc, ray.exceptions.ActorDiedError))
                busy = True
            except ray.exceptions.RayError:
                continue
        return busy

    def waiting_for(self) -> str:
        """What the run waits for, in one line."""
        parts = []
        for a in self.actors:
            if a.state == "down":
                parts.append(f"matter actor {a.index} down ({a.why}): needs {self.ex._needs()}; "
                             f"GPU {_free('GPU')}")
            elif a.state == "dead":
                parts.append(f"matter actor {a.index} dead")
        starting = sum(not t.started for t in self.tasks.values())
        if starting:
            parts.append(f"{starting} video task(s) not started: CPU {_free('CPU')}")
        if len(self.tasks) > starting:
            parts.append(f"{len(self.tasks) - starting} video task(s) (reading, matter idle, encoding) pending: "
                         f"CPU {_free('CPU')}")
        silent = sum(w.alive and not w.up for w in self.writers)
        if silent:
            parts.append(f"{silent} shard writer(s) not started")
        if not parts:
            parts.append(f"{len(self.queue)} video(s) queued, no actor up")
        return "; ".join(parts)

    def _check_stall(self) -> bool:
        """After ``stall_timeout`` without progress and nothing running, look once more after two writer
        pings (asked at once): a chunk that ended just before the first look is being encoded, and its
        samples reach a writer within that time. Then end the run as stalled."""
        now = time.monotonic()
        if now - self.last_progress < self.res.stall_timeout:
            self.suspect = None
            return False
        if self.suspect is not None and now - self.suspect < 2 * self._writer_ping_period():
            return False
        if self._busy():
            self._progress()
            self.suspect = None
            return False
        if self.suspect is None:
            self.suspect = time.monotonic()     # after the look (it may wait for answers)
            for w in self.writers:
                w.next_ping = 0.0
            return False
        why = f"no progress for {self.res.stall_timeout:g} s, waiting for: {self.waiting_for()}"
        log.error("%s", why)
        self.result.stalled = why
        self._fail_all(f"stalled ({why})", committing=True)
        return True

    # -- the loop --
    def _handle(self, ref) -> None:
        gen = self.next_items.get(ref)
        if gen is not None:
            self._pull(gen, self.tasks[gen])
        elif ref in self.committing:
            self._committed(ref)
        elif ref in self.pings:
            self._pinged(ref)

    def run(self) -> ExecResult:
        t0 = time.perf_counter()
        try:
            while self.pending or self.active or self.tasks or self.committing:
                self.ex.on_tick()
                self._fill()
                self._maybe_commit()
                self._send_pings()
                if self._check_stall():
                    break
                waitables = [*self.next_items, *self.committing, *self.pings]
                if not waitables:
                    time.sleep(0.2)
                    continue
                # everything that is ready (a busy cluster: one wait per round), else the first to be
                ready = ray.wait(waitables, num_returns=len(waitables), timeout=0, fetch_local=False)[0]
                if not ready:
                    ready = ray.wait(waitables, num_returns=1, timeout=1.0, fetch_local=False)[0]
                for ref in ready:
                    self._handle(ref)
        finally:
            self.bar.close()
            for w in self.writers:  # every shard is committed or failed: their spill files go with them
                ray.kill(w.handle, no_restart=True)
        self.result.wall_s = time.perf_counter() - t0
        return self.result


def _actor_record(actor) -> dict:
    """Where an actor ran and how busy it was; an actor that does not answer is recorded as such."""
    try:
        info, stats = ray.get([actor.info.remote(), actor.stats.remote()], timeout=10)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        return {"info": {"dead": _reason(exc)}, "stats": {"busy_s": 0.0, "idle_s": 0.0}}
    return {"info": info, "stats": stats}

