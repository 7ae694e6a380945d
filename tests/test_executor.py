"""The scheduling loop of ``pipeline.executor`` (``Executor`` and its ``_Loop``) with plain-function steps.

The real job's steps (SA-V reader, matter models, JPEG/PNG encoder, tar writer) are slow and need videos
and weights; the loop itself only moves object references between whatever ``pipeline.protocol.Steps``
it is given. Here the steps are tiny module-level Python objects (a "video" is a few integers, the
"matter" doubles them, the "writer" keeps them and returns them from ``commit``), run in one real local
Ray session, so each test pins down one behaviour of the loop, fast and exactly:

- every shard is written with exactly its items, once (dispatch, encode + hand-off, commit);
- a matter actor that crashes and is restarted by Ray gets its chunks again (the output is unchanged);
- the last matter actor dying for good ends the run at once, every shard failed, no hang;
- the stall watchdog ends a run whose reader never answers, its shard failed, saying what it waits for;
- a reader that raises is bad input of its video: the keys it did not deliver become failed rows;
- a matter actor that crashed takes no more work until it is back; a video lost on it goes elsewhere;
- the watchdog waits for reads and encodes that progress, and ends a run whose encode hangs;
- it waits for a video task that has not started yet, up to a bound;
- a reader process that dies on a video every time turns that video's keys into failed rows (``Steps.lost``);
- a per-item matter failure is a failed row in the writer, not a lost shard;
- a shard writer lost mid-run is replaced and its shards are redone, with the same output;
- a video bound to a matter actor that went without the driver being told (its restart never ends) is
  sent to another actor, not left waiting for the actor until the stall watchdog ends the run.

Ray pickles the steps; this module is not importable by name in Ray's workers (pytest imports it from
``tests/`` as ``test_executor``), so it is registered with cloudpickle to be sent by value.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import ray

from pipeline.executor import ExecResult, Executor, ResourceConfig, ShardTask
from pipeline.protocol import Chunk, Failure, Stage, Steps, VideoHeader

log = logging.getLogger(__name__)

CLUSTER_CPUS = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the steps (module level: Ray pickles them) ---------------------------------------------------


@dataclass(frozen=True)
class Video:
    """What a ShardTask lists: a "video" of ``n`` items with values ``base + j``."""

    video_id: str
    base: int
    n: int = 3


@dataclass
class Item:
    key: str
    value: int


HANG_S = 30


@dataclass
class ReadCfg:
    chunk: int = 2
    raise_at: dict = field(default_factory=dict)     # video_id -> chunk index at which the reader raises
    hang: tuple = ()                                 # video ids whose reader never yields its header
    crash_at: dict = field(default_factory=dict)     # video_id -> chunk index at which the reader process exits
    trace: str = ""                                  # a file that gets a line (the video id) per reader start
    slow: float = 0.0                                # seconds the reader takes before each chunk


def read(video: Video, cfg: ReadCfg, start_chunk: int = 0):
    """A VideoHeader with the video's keys, then its items in chunks of ``cfg.chunk``."""
    if cfg.trace:
        with open(cfg.trace, "a") as f:
            f.write(video.video_id + "\n")
    if video.video_id in cfg.hang:    # longer than any run that hangs on it lasts (see the stall tests' bounds)
        time.sleep(HANG_S)              # its CPU stays taken until then: the tests after it in this session wait
    if cfg.raise_at.get(video.video_id) == -1:
        raise RuntimeError(f"reader bug in {video.video_id} before its header")
    items = [Item(f"{video.video_id}_{j:02d}", video.base + j) for j in range(video.n)]
    yield VideoHeader(video.video_id, [i.key for i in items], [], cfg.chunk)
    for c, lo in enumerate(range(0, len(items), cfg.chunk)):
        if c < start_chunk:
            continue
        if cfg.crash_at.get(video.video_id) == c:
            os._exit(1)
        if cfg.raise_at.get(video.video_id) == c:
            raise RuntimeError(f"reader bug in {video.video_id}")
        time.sleep(cfg.slow)
        yield Chunk(video.video_id, items[lo:lo + cfg.chunk])


class Doubler:
    """A matter actor: doubles each item. ``mode``: "ok"; "die_once" (the process exits on its first
    chunk while ``marker`` does not exist, creating it); "die" (exits on every chunk); "fail" (the items
    named in ``fail_keys`` get a Failure, as ``MatterActor`` reports a matter error about a sample);
    "slow_restart" (a restarted process takes ``marker`` seconds to load: a GPU that went with its node)."""

    def __init__(self, mode: str = "ok", marker: str = "", fail_keys: tuple = ()):
        self.mode, self.marker, self.fail_keys = mode, marker, fail_keys
        if mode == "slow_restart" and ray.get_runtime_context().was_current_actor_reconstructed:
            time.sleep(float(marker))
        self.calls = 0
        self.in_refine = 0

    def refine(self, chunk: Chunk) -> list:
        self.in_refine += 1
        try:
            return self._refine(chunk)
        finally:
            self.in_refine -= 1

    def fingerprint(self) -> dict:
        return {"matter": "doubler", "mode": self.mode}

    def ping(self) -> bool:
        return True

    def running(self) -> int:
        return self.in_refine

    def info(self) -> dict:
        return {"pid": os.getpid()}

    def stats(self) -> dict:
        return {"calls": self.calls, "busy_s": 0.0, "idle_s": 0.0}

    def _refine(self, chunk: Chunk) -> list:
        if self.mode == "doomed":
            # the first actor to matte a chunk is doomed: every process of it (restarts too) exits on
            # each chunk it gets; each life writes "<actor id> <pid> <video id>" to ``marker``.trace
            me = ray.get_runtime_context().get_actor_id()
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, me.encode())
                os.close(fd)
            except FileExistsError:
                pass
            with open(self.marker) as f:
                doomed = f.read() == me
            if doomed:
                with open(self.marker + ".trace", "a") as f:
                    f.write(f"{me} {os.getpid()} {chunk.video_id}\n")
                os._exit(1)
        if self.mode == "slow_first" and self.calls == 0:   # a long first call (a compile): marker = seconds
            time.sleep(float(self.marker))
        if self.mode == "die" or (self.mode == "die_once" and not os.path.exists(self.marker)):
            if self.mode == "die_once":
                with open(self.marker, "w") as f:
                    f.write(str(os.getpid()))
            os._exit(1)
        self.calls += 1
        return [Failure(i.key, chunk.video_id, "MatterError", "matter doubler: bad item", Stage.MATTER,
                        matter="doubler") if i.key in self.fail_keys else 2 * i.value for i in chunk.items]


def encode(chunk: Chunk, results: list, tag: str) -> list:
    """(key, value) per ok item, the Failure as is. ``tag`` "crash:<video_id>": the encode process of
    that video's chunks exits."""
    if tag == f"crash:{chunk.video_id}":
        os._exit(1)
    if tag == f"hang:{chunk.video_id}":
        time.sleep(120)
    if tag.startswith("slow:"):                       # "slow:<seconds per item>"
        time.sleep(float(tag.split(":")[1]) * len(chunk.items))
    if len(results) != len(chunk.items):
        raise ValueError(f"{len(results)} results for {len(chunk.items)} items")
    return [r if isinstance(r, Failure) else Item(i.key, r) for i, r in zip(chunk.items, results)]


class Incomplete(RuntimeError):
    """Like ``pipeline.writer.ShardIncomplete``: ``system`` asks the executor to redo the shard."""

    def __init__(self, message: str, system: bool = False):
        super().__init__(message)
        self.system = system

    def __reduce__(self):
        return (type(self), (str(self), self.system))


@dataclass
class Committed:
    """What ``Recorder.commit`` returns (the executor needs ``marker`` and ``failed``)."""

    index: int
    marker: dict
    items: dict          # key -> value of every ok item
    failed: dict         # key -> error type of every failed item
    messages: dict       # key -> message of every failed item


class Recorder:
    """A shard writer that keeps what it is given (``pipeline.protocol.ShardWriterStep``).

    ``crash_on``: the writer process exits when it is given this key while ``marker`` does not exist."""

    def __init__(self, crash_on: str, marker: str, index: int, marker_fields: dict):
        self.crash_on, self.crash_marker = crash_on, marker
        self.index, self.marker = index, marker_fields
        self.items: dict = {}
        self.failures: dict = {}
        self.system: list = []

    def add(self, item) -> None:
        if item.key in self.items or item.key in self.failures:
            raise ValueError(f"duplicate key {item.key}")
        if item.key == self.crash_on and not os.path.exists(self.crash_marker):
            with open(self.crash_marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)
        if isinstance(item, Failure):
            self.failures[item.key] = item
        else:
            self.items[item.key] = item.value

    @property
    def count(self) -> int:
        return len(self.items) + len(self.failures)

    def add_system_failure(self, key: str, reason: str) -> None:
        self.system.append(f"{key}: {reason}")

    def commit(self) -> Committed:
        if self.system:
            raise Incomplete(f"shard {self.index}: {self.system[0]}", system=True)
        return Committed(self.index, self.marker, dict(self.items),
                         {k: f.error_type for k, f in self.failures.items()},
                         {k: f.message for k, f in self.failures.items()})

    def close(self) -> None:
        pass


def lost(video_id: str, keys, reason: str, raised=None) -> list:
    keys = [f"{video_id}_video"] if keys is None else keys
    etype = "ReaderCrashed" if raised is None else "ReaderError"
    return [Failure(k, video_id, etype, reason, Stage.READ) for k in keys]


# --- harness --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session for the module (fake CPUs); a session already open is used and left open."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        # "local": a new cluster, never one that `ray start` left on this machine (which a bare init joins)
        ray.init(address="local", num_cpus=CLUSTER_CPUS, include_dashboard=False, log_to_driver=False)
    if ray.cluster_resources().get("CPU", 0) < 2:
        pytest.skip("the Ray session open in this process has fewer than 2 CPUs")
    yield
    if started:
        ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def make_tasks(shards: int = 4, videos: int = 2, n: int = 3) -> list[ShardTask]:
    tasks = []
    for s in range(shards):
        vids = tuple(Video(f"s{s}v{v}", 100 * s + 10 * v, n) for v in range(videos))
        tasks.append(ShardTask(s, vids, {"videos": [v.video_id for v in vids]}))
    return tasks


def reads(trace) -> collections.Counter:
    """How many times each video's reader started."""
    return collections.Counter(trace.read_text().split())


def expected_items(task: ShardTask, skip: tuple = ()) -> dict:
    return {f"{v.video_id}_{j:02d}": 2 * (v.base + j) for v in task.videos for j in range(v.n)
            if v.video_id not in skip}


def plain_executor(read_cfg=None, matter_args=("ok",), writer=("", ""), encode_tag="x2", **res) -> Executor:
    """An executor of the plain steps, one matter actor unless ``res`` says otherwise (not started)."""
    steps = Steps(read=read, read_args=(read_cfg or ReadCfg(),), matter=Doubler, matter_args=tuple(matter_args),
                  encode=encode, encode_args=(encode_tag,), writer=functools.partial(Recorder, *writer), lost=lost)
    # one encoder actor per matter actor (not the default two): each actor is a process started per run
    cfg = ResourceConfig(**({"num_actors": 1, "actor_cpus": 1.0, "max_restarts": 1, "shard_retries": 1,
                             "stall_timeout": 60.0, "encoders_per_actor": 1} | res))
    return Executor(steps, cfg, progress=False)


def run_steps(tasks, read_cfg=None, matter_args=("ok",), writer=("", ""), stall_timeout=None, encode_tag="x2",
              before_run=None, **res) -> ExecResult:
    """Run ``tasks`` through the plain steps on one matter actor (unless ``res`` says otherwise);
    ``before_run(executor)`` is called once its actors are up."""
    ex = plain_executor(read_cfg, matter_args, writer, encode_tag, **res)
    try:
        ex.start_actors()           # actor start is bounded by stall_timeout too: not the one under test
        if stall_timeout is not None:
            ex.res = dataclasses.replace(ex.res, stall_timeout=stall_timeout)
        if before_run is not None:
            before_run(ex)
        t0 = time.monotonic()
        result = ex.run(tasks)
        log.info("run of %d shards: %.1f s, done %s, failed %s, redone %s, stalled %s", len(tasks),
                 time.monotonic() - t0, sorted(result.done), result.failed, result.redone, result.stalled)
        return result
    finally:
        ex.shutdown()


def assert_all_done(result: ExecResult, tasks, redone=None) -> None:
    assert result.failed == {}
    assert result.stalled is None
    assert sorted(result.done) == [t.index for t in tasks]
    for t in tasks:
        got = result.done[t.index]
        assert got.index == t.index
        assert got.marker == t.marker
        assert got.items == expected_items(t)
        assert got.failed == {}
    if redone is not None:
        assert result.redone == redone


# --- tests ----------------------------------------------------------------------------------------


def test_every_shard_is_written_with_exactly_its_items(ray_session, tmp_path):
    tasks = make_tasks(4, 2, 3)
    trace = tmp_path / "reads"
    encoders = []              # the default two encoder actors per matter actor, chunks handed round robin
    assert_all_done(run_steps(tasks, ReadCfg(trace=str(trace)), encoders_per_actor=2,
                              before_run=lambda ex: encoders.append(len(ex.encoders))), tasks, redone={})
    assert encoders == [2]
    assert reads(trace) == {v.video_id: 1 for t in tasks for v in t.videos}


def test_a_matter_actor_that_crashes_once_gets_its_chunks_again(ray_session, tmp_path):
    """The only actor exits on its first chunk; Ray restarts it (max_restarts=1) and the loop sends
    the chunks that were on it again: same output, and no shard is redone (nothing was lost)."""
    died = tmp_path / "died"
    tasks = make_tasks(4, 2, 3)
    result = run_steps(tasks, matter_args=("die_once", str(died)), max_restarts=1)
    assert died.exists()                     # it did die
    assert_all_done(result, tasks, redone={})


def test_the_last_matter_actor_dying_fails_every_shard_at_once(ray_session):
    """No restart left (max_restarts=0) and one actor: every unfinished shard is failed at once, long
    before the stall watchdog. The reason is ``_actor_lost``'s "every matter actor died"; a shard whose
    chunk Ray reported as merely unavailable (before it knew the actor was dead) is failed first by
    ``_resend`` (a chunk out of resends), the others when the ping finds the actor dead."""
    tasks = make_tasks(2, 2, 3)
    result = run_steps(tasks, matter_args=("die",), max_restarts=0, stall_timeout=30.0)
    assert result.wall_s < 30
    assert result.done == {}
    assert result.stalled is None
    assert sorted(result.failed) == [0, 1]
    for i, why in result.failed.items():
        assert why == "every matter actor died" or re.fullmatch(
            rf"a chunk of s{i}v\d failed on 1 matter actors: matter actor 0: .*", why), why
    assert result.redone == {}


def test_a_reader_that_never_answers_ends_the_run_as_stalled(ray_session):
    """The only reader hangs before its header: nothing progresses and no actor is busy, so after
    ``stall_timeout`` the run ends (no hang), saying it waits for a reader, and its shard is failed.

    (One shard only: while encode tasks run no actor counts as busy, so on a loaded machine a 3 s
    watchdog could also fire between the chunks of other shards.)"""
    tasks = [ShardTask(0, (Video("s0v0", 0),), {"videos": ["s0v0"]})]
    result = run_steps(tasks, ReadCfg(hang=("s0v0",)), stall_timeout=3.0)
    # ends before the reader's hang would (3 s + a second look 2.5 s later, after the video task's process
    # starts: within START_GRACE_S, 15 s and more beside two busy processes on 2 cores)
    assert 3 <= result.wall_s < HANG_S
    assert result.done == {}
    assert result.stalled is not None
    assert result.stalled.startswith("no progress for 3 s, waiting for: 1 video task(s) (reading, matter idle, "
                                     "encoding) pending: CPU ")
    assert result.failed == {0: f"stalled ({result.stalled})"}
    assert result.redone == {}


def test_a_reader_that_raises_is_bad_input_of_its_video(ray_session, tmp_path):
    """A reader that raises (a Python exception; ``read_video`` itself never does: it records unexpected
    errors as ReaderError rows) is treated as ``read_video`` treats such an error: bad input of that
    video, not lost data. Mid-stream, the chunks it delivered stay and the keys it did not deliver
    become failed rows; before its header, the video gets one row. Both shards are written (no exit 0
    hides a sample: each is a row), nothing is redone, each video is read once."""
    tasks = make_tasks(2, 2, 3)
    trace = tmp_path / "reads"
    result = run_steps(tasks, ReadCfg(raise_at={"s1v0": 1, "s0v1": -1}, trace=str(trace)), shard_retries=1)
    assert reads(trace) == {v.video_id: 1 for t in tasks for v in t.videos}
    assert result.failed == {} and result.redone == {} and result.stalled is None
    want1 = expected_items(tasks[1])
    del want1["s1v0_02"]                      # chunk 1 of s1v0 (chunks of 2) was never read
    assert result.done[1].items == want1
    assert result.done[1].failed == {"s1v0_02": "ReaderError"}
    assert result.done[1].messages == {"s1v0_02": "the reader raised RuntimeError: reader bug in s1v0"}
    assert result.done[0].items == expected_items(tasks[0], skip=("s0v1",))
    assert result.done[0].failed == {"s0v1_video": "ReaderError"}
    assert result.done[0].messages == {"s0v1_video": "the reader raised RuntimeError: reader bug in s0v1 before "
                                                     "its header"}


def test_a_reader_process_that_dies_every_time_becomes_failed_rows(ray_session, tmp_path):
    """The reader process of one video exits after its header and first chunk, every time (Ray retries
    it ``max_restarts`` times): the shard is redone once, and that video is then given up: one
    ``Steps.lost`` row per key of its header (the keys it read before dying too) goes to the writer,
    and the shard is written with them."""
    tasks = make_tasks(2, 2, 3)
    trace = tmp_path / "reads"
    result = run_steps(tasks, ReadCfg(crash_at={"s0v1": 1}, trace=str(trace)), max_restarts=1, shard_retries=1)
    assert reads(trace)["s0v1"] == 2          # the first attempt and Ray's one retry; then it is given up
    assert result.failed == {}
    assert result.stalled is None
    assert sorted(result.done) == [0, 1]
    assert result.done[1].items == expected_items(tasks[1])
    assert result.done[0].items == expected_items(tasks[0], skip=("s0v1",))
    keys = ["s0v1_00", "s0v1_01", "s0v1_02"]
    assert result.done[0].failed == dict.fromkeys(keys, "ReaderCrashed")
    assert result.done[0].messages == dict.fromkeys(keys, "the reader process died on this video 1 times")
    assert result.redone == {0: 1}


def test_a_matter_failure_of_one_item_is_a_row_not_a_lost_shard(ray_session):
    """``refine`` returns a Failure for one item (as ``MatterActor`` does for a matter error about a
    sample): the writer gets it as that key's failed row; the shard is written, not redone."""
    tasks = make_tasks(2, 2, 3)
    bad = "s1v0_01"
    result = run_steps(tasks, matter_args=("fail", "", (bad,)))
    assert result.failed == {} and result.redone == {} and result.stalled is None
    assert result.done[0].items == expected_items(tasks[0]) and result.done[0].failed == {}
    want = expected_items(tasks[1])
    del want[bad]
    assert result.done[1].items == want
    assert result.done[1].failed == {bad: "MatterError"}
    assert result.done[1].messages == {bad: "matter doubler: bad item"}


def test_a_lost_shard_writer_is_replaced_and_its_shards_redone(ray_session, tmp_path):
    """The writer actor's process exits when it is handed one item (once): a new writer takes over, the
    shards that were open on the lost one are redone, and every shard is written exactly as usual."""
    died = tmp_path / "writer_died"
    tasks = make_tasks(2, 2, 3)
    result = run_steps(tasks, writer=("s1v0_01", str(died)))
    assert died.exists()
    assert_all_done(result, tasks)
    assert 1 in result.redone and set(result.redone.values()) == {1}


def test_an_encoder_that_dies_every_time_is_a_failed_shard_not_bad_input(ray_session, tmp_path):
    """The encode process of one video's chunks exits every time (after Ray's retries): the reader was
    fine, so that is a system failure (the shard is redone, then failed), never ``ReaderCrashed`` rows
    in a shard marked done (which was what a crashed encode task counted as)."""
    tasks = make_tasks(2, 2, 3)
    trace = tmp_path / "reads"
    result = run_steps(tasks, ReadCfg(trace=str(trace)), encode_tag="crash:s0v1", max_restarts=1, shard_retries=1)
    assert sorted(result.done) == [1] and result.done[1].items == expected_items(tasks[1])
    assert list(result.failed) == [0] and result.failed[0].startswith("a chunk of s0v1 was lost: ")
    assert result.failed[0].endswith("(redone 1 times)")
    assert reads(trace)["s0v1"] == 2          # read again on the redo: never given up as a bad video
    # shard 1 may be redone too: a chunk of it can be on the encoder process when that dies
    assert result.redone.get(0) == 1 and set(result.redone) <= {0, 1} and result.stalled is None


def test_a_crashed_matter_actor_gets_no_more_work_until_it_is_back(ray_session, tmp_path):
    """Two actors; the first to matte a chunk exits on every chunk (both of its lives: max_restarts=1).
    A video lost on it goes to the other actor, and the crashed actor takes nothing until a ping finds
    it back (before, a failed chunk lowered its load at once, so a crashed actor still "up" drew more
    chunks: a resend could land on it again and exceed --max-restarts, failing the shard). Every shard
    is written exactly; each life of the doomed actor saw one video, never one that had failed on it."""
    marker = tmp_path / "doomed"
    tasks = make_tasks(4, 2, 3)
    encoders = []
    result = run_steps(tasks, matter_args=("doomed", str(marker)), num_actors=2, actor_cpus=1.0, max_restarts=1,
                       read_ahead=1, before_run=lambda ex: encoders.append(len(ex.encoders)))
    assert_all_done(result, tasks, redone={})
    assert encoders == [2]                               # --encoders-per-actor 1, two matter actors
    lives = [line.split() for line in (tmp_path / "doomed.trace").read_text().splitlines()]
    assert 1 <= len(lives) <= 2                          # one line per life: it exits on its first chunk
    assert len({pid for _, pid, _ in lives}) == len(lives)
    assert len({vid for _, _, vid in lives}) == len(lives)


def test_the_watchdog_waits_for_progressing_reads_and_encodes(ray_session):
    """Reads and encodes that take longer than --stall-timeout in all but make progress (a chunk read,
    a sample handed to the writer) are not a stall, although no matter actor is busy meanwhile: the
    writer's count of samples taken, asked by the driver's pings, is progress (before, only a chunk
    on an up actor counted as busy, and such a run was ended as stalled)."""
    tasks = [ShardTask(0, (Video("s0v0", 0, 4),), {"videos": ["s0v0"]})]
    # each step (a sample's encode, a chunk's read) is well under the timeout, with room for a loaded
    # machine (the suite runs two tests at once); all of them together take longer than the timeout
    result = run_steps(tasks, ReadCfg(chunk=4), encode_tag="slow:2", stall_timeout=6.0)
    assert_all_done(result, tasks)
    assert result.wall_s > 6                  # the encode alone took 8 s
    tasks = [ShardTask(0, (Video("s0v0", 0, 6),), {"videos": ["s0v0"]})]
    result = run_steps(tasks, ReadCfg(chunk=1, slow=1.0), stall_timeout=5.0)
    assert_all_done(result, tasks)
    assert result.wall_s > 5                  # the reads alone took 6 s


def test_a_hung_encode_ends_the_run_as_stalled(ray_session):
    """An encode that never returns hands the writer nothing, no actor is busy: after --stall-timeout
    the run ends, its shard failed, saying it waits for a video task."""
    tasks = [ShardTask(0, (Video("s0v0", 0),), {"videos": ["s0v0"]})]
    result = run_steps(tasks, encode_tag="hang:s0v0", stall_timeout=3.0)
    assert 3 <= result.wall_s < 60                    # the encode hangs for 120 s
    assert result.done == {} and result.redone == {}
    assert result.stalled is not None and "1 video task(s)" in result.stalled
    assert result.failed == {0: f"stalled ({result.stalled})"}


def test_a_long_first_chunk_on_an_actor_is_work_not_a_stall(ray_session):
    """The actor's first chunk takes longer than --stall-timeout (a compile) while nothing else moves:
    the watchdog asks the actors whether a chunk runs, and waits."""
    tasks = [ShardTask(0, (Video("s0v0", 0, 4),), {"videos": ["s0v0"]})]
    result = run_steps(tasks, ReadCfg(chunk=2), matter_args=("slow_first", "10"), stall_timeout=5.0)
    assert_all_done(result, tasks)
    assert result.wall_s > 5


def test_a_matter_actor_says_it_runs_chunks_while_both_its_threads_are_in_them(ray_session):
    """The watchdog's question (``running``) and pings have a thread of their own: asked while two long
    first chunks hold both of the actor's threads, the actor answers at once (before, the answer came once
    the chunks had ended, saying 0, and the watchdog called the run stalled)."""
    from pipeline.executor import HEALTH

    ex = plain_executor(matter_args=("slow_first", "6"), max_restarts=0)
    try:
        ex.start_actors()
        actor = ex.actors[0]
        chunks = [actor.refine.remote(Chunk("v", [Item(f"v_{j:02d}", j)])) for j in range(2)]
        time.sleep(1.0)                                 # both chunks are in their 6 s first call
        t0 = time.monotonic()
        running = ray.get(actor.running.options(concurrency_group=HEALTH).remote(), timeout=5)
        answered = time.monotonic() - t0
        assert ray.get(actor.ping.options(concurrency_group=HEALTH).remote(), timeout=5) is True
        assert running == 2 and answered < 3, (running, answered)
        assert ray.get(chunks) == [[0], [2]]
    finally:
        ex.shutdown()


@ray.remote(num_cpus=0)
class CpuHog:
    """Holds CPUs of the cluster (its ``num_cpus`` option) until it is killed."""

    def ping(self) -> bool:
        return True


def _hold_free_cpus(hogs: list, release_after: float | None = None):
    """A ``before_run`` that takes every CPU the run's own actors do not hold, so its video task cannot start;
    released ``release_after`` seconds into the run (or never). (Not "every CPU free now": the actors of the
    previous run in this session may not have let go yet, and the hog would then take too few.)"""
    def before_run(ex) -> None:
        held = ex._resources["CPU"] * len(ex.actors) + ex.res.encode_cpus * len(ex.encoders)
        hog = CpuHog.options(num_cpus=ray.cluster_resources()["CPU"] - held).remote()
        ray.get(hog.ping.remote(), timeout=60)         # placed: once the CPUs a previous run held are free
        hogs.append(hog)
        if release_after is not None:
            threading.Timer(release_after, ray.kill, (hog,)).start()
    return before_run


def test_a_video_task_not_started_yet_is_not_a_stall_until_the_grace_ends(ray_session, monkeypatch):
    """A video task whose process has not begun it (here: no CPU free until another job lets go, as a
    worker process being started on a loaded node) is Ray's work: the 3 s watchdog waits. One that never
    starts ends the run after ``START_GRACE_S``, saying so (before, a worker start slower than the
    timeout under load ended short runs as stalled: the executor's watchdog tests, in CI)."""
    from pipeline import executor

    tasks = [ShardTask(0, (Video("s0v0", 0, 4),), {"videos": ["s0v0"]})]
    hogs: list = []
    try:
        # without the grace the run ends as stalled 4.5 s in (3 s, then a second look 2 writer pings later)
        result = run_steps(tasks, stall_timeout=3.0, before_run=_hold_free_cpus(hogs, release_after=6.0))
        assert_all_done(result, tasks)
        assert result.wall_s > 6                      # it waited for the CPUs
        monkeypatch.setattr(executor, "START_GRACE_S", 5.0)
        result = run_steps(tasks, stall_timeout=3.0, before_run=_hold_free_cpus(hogs))
        assert 5 <= result.wall_s < 30
        assert result.stalled is not None
        # (under load its shard writer may not have answered within the grace either: said too)
        assert re.fullmatch(r"no progress for 3 s, waiting for: 1 video task\(s\) not started: CPU 0 of 4 free "
                            r"in the cluster(; 1 shard writer\(s\) not started)?", result.stalled), result.stalled
        assert result.failed == {0: f"stalled ({result.stalled})"}
    finally:
        for hog in hogs:
            ray.kill(hog)



def _kill_into_a_restart_that_never_ends(actor) -> None:
    """Kill a matter actor's process (its restart then takes minutes: see Doubler "slow_restart") and wait
    until Ray has it restarting: to the driver, which is not told, it is still up."""
    from ray._private import state       # the actor's state in the GCS (the state API needs the dashboard)

    pid = ray.get(actor.info.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while state.actors(actor._actor_id.hex())["State"] != "RESTARTING":
        assert time.monotonic() < deadline, "the killed actor was never restarting"
        time.sleep(0.1)


#: Ray's own fault-injection hook (its tests use it): the GCS answers a process's subscription to an
#: actor's state a second late, so a video task's first call to its actor is queued before its process
#: knows the actor is restarting, as happens by chance under load
LATE_ACTOR_STATE = "ControlPlanePubSubGcsService.grpc_server.GcsSubscriberCommandBatch=1000000:1000000"

_UNSEEN_RUN = r"""
import os, sys
os.environ["RAY_testing_asio_delay_us"] = sys.argv[1]
import ray
from tests import test_executor as t
ray.init(address="local", num_cpus=t.CLUSTER_CPUS, include_dashboard=False, log_to_driver=False)
ray.cloudpickle.register_pickle_by_value(t)
tasks = t.make_tasks(4, 2, 3)
result = t.run_steps(tasks, matter_args=("slow_restart", "300"), num_actors=2, actor_cpus=0.5, max_restarts=1,
                     stall_timeout=15.0, before_run=lambda ex: t._kill_into_a_restart_that_never_ends(ex.actors[1]))
print("RESULT", sorted(result.done), result.failed, result.redone, result.stalled, round(result.wall_s, 1))
t.assert_all_done(result, tasks, redone={})
"""


def test_a_video_bound_to_an_actor_that_went_unseen_goes_to_another(tmp_path):
    """Two actors; actor 1's process is killed before the run and its restart never ends (a GPU that
    went with its node), and nothing tells the driver: in the cluster, its only video task was
    cancelled with a shard redone for a lost writer, or it went between two videos, or Ray reran a
    video task whose node died. The videos handed to it are sent to actor 0, and every shard is
    written exactly.

    A video task's call to an actor is queued until its process knows where the actor is; when it
    learns that the actor is restarting, Ray fails only the calls made after that, and the queued one
    waits until the actor is back, for good here. Before, the driver asked only actors it knew were
    down, so such a video task waited until the stall watchdog ended the run (test_cluster: a redone
    shard's video task pending for 180 s, exit 1). Its own Ray cluster (a subprocess): the late
    answer is set for the whole cluster when it starts."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", _UNSEEN_RUN, LATE_ACTOR_STATE], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "matter actor 1 is down" in out, out[-4000:]
