"""Issue 16: the job on a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head
and worker nodes with one fake GPU each, all on loopback), with worker nodes removed mid-run, as
preemptible GPUs do. The job runs as users run it: ``python -m pipeline.run --address <cluster>``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from mava import schema
from mava.verify import verify
from tests.job_cli import ONE_ENCODER, REPO, SPLIT, run_cli, tree_bytes

#: nodes are declared dead within ~2 s of their raylet going away (Ray's default is ~30 s)
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
               "health_check_failure_threshold": 3}
SLOW = ["--matter", "tests.matters_for_tests:SlowMaskMatter", "--matter-option", "delay=0.4"]


@pytest.fixture(scope="module")
def cluster():
    """A head node (2 CPUs, no GPU: it runs the readers, encoders and the driver's writers); tests add
    and remove GPU worker nodes and leave none behind."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "_system_config": FAST_HEALTH})
    yield c
    c.shutdown()


@pytest.fixture
def workers(cluster):
    """Adds GPU worker nodes to the cluster (``add(**resources)``); removes those left at the end."""
    added = []

    def add(**resources):
        node = cluster.add_node(num_cpus=1, num_gpus=1, **resources)
        added.append(node)
        cluster.wait_for_nodes()
        return node

    yield add
    for node in added:
        if node in cluster.worker_nodes:
            cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="module")
def clean(synth_split, tmp_path_factory):
    """The same job without faults on a local cluster: what every run below must end with, byte for byte."""
    out = tmp_path_factory.mktemp("clean")
    res = run_cli(synth_split.parent, out, *SLOW[:2], "--matter-option", "delay=0")
    assert res.returncode == 0, res.stderr[-3000:]
    return out / SPLIT


def _start(cluster, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.run", "--split", SPLIT, "--data-root", str(data), "--out", str(out),
           "--address", cluster.address, "--no-progress", "--videos-per-shard", "1", "--log-level", "WARNING",
           *ONE_ENCODER, *SLOW, *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_done_markers(proc: subprocess.Popen, split: Path, n: int = 1, timeout: float = 120) -> None:
    """Until ``n`` shards are done (the fault comes mid-run, after the first shard)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list((split / "done").glob("*.json"))) >= n:
            return
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    raise AssertionError(f"no shard finished before the fault (exit {proc.poll()}): {(out + err)[-3000:]}")


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    t0 = time.time()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err, time.time() - t0


def _same_as(clean: Path, split: Path) -> None:
    assert tree_bytes(split) == tree_bytes(clean)
    assert verify(str(split)).passed


def test_a_lost_node_with_capacity_left_completes_byte_identical(cluster, workers, synth_split, clean, tmp_path,
                                                                record_property):
    a, _ = workers(), workers()
    proc = _start(cluster, synth_split.parent, tmp_path)
    _wait_done_markers(proc, tmp_path / SPLIT)
    cluster.remove_node(a, allow_graceful=False)          # its matter actor, and any reader on it, go
    rc, log, took = _finish(proc, timeout=240)
    record_property("seconds_from_fault_to_end", round(took, 1))  # README: Faults, measured
    assert rc == 0, log[-3000:]
    _same_as(clean, tmp_path / SPLIT)
    run = json.loads((tmp_path / SPLIT / schema.RUN_JSON).read_text())
    assert run["summary"]["shards_done"] == len(list((clean / "done").glob("*.json")))
    assert "Traceback" not in log


def test_a_lost_node_with_no_capacity_left_ends_the_run_and_a_rerun_completes(cluster, workers, synth_split,
                                                                              clean, tmp_path, record_property):
    a = workers()
    # 1 s segments: the fault must come while segments are left to matte (with 0.4 s, a loaded machine
    # wrote the first shard only when every segment was matted, and the run completed)
    proc = _start(cluster, synth_split.parent, tmp_path, "--stall-timeout", "15", "--matter-option", "delay=1")
    _wait_done_markers(proc, tmp_path / SPLIT)
    cluster.remove_node(a, allow_graceful=False)          # the only GPU: nothing can matte any more
    rc, log, took = _finish(proc, timeout=120)
    record_property("seconds_from_fault_to_end", round(took, 1))  # README: Faults, measured
    assert rc == 1, log[-3000:]
    assert took < 90, f"the run took {took:.0f} s to end after the loss"
    assert "no progress for 15 s" in log and "matter actor 0" in log and "needs 1 GPU" in log, log[-3000:]
    assert "FAILED" in log and "Traceback" not in log
    assert not (tmp_path / SPLIT / schema.LEASE_JSON).exists(), "the stalled run kept its lease"
    done = {p.name for p in (tmp_path / SPLIT / "done").glob("*.json")}
    assert done and len(done) < len(list((clean / "done").glob("*.json")))
    for name in done:                                     # a shard called done holds exactly the clean run's samples
        shard = name.removesuffix(".json")
        for rel in (schema.shard_file(shard), schema.manifest_file(shard), schema.done_file(shard)):
            assert (tmp_path / SPLIT / rel).read_bytes() == (clean / rel).read_bytes(), rel
    workers()                                             # capacity is back: a plain rerun completes
    proc = _start(cluster, synth_split.parent, tmp_path, "--matter-option", "delay=0")
    rc, log, _ = _finish(proc, timeout=240)
    assert rc == 0, log[-3000:]
    _same_as(clean, tmp_path / SPLIT)


def test_a_node_removed_then_added_back_is_used_again(cluster, workers, synth_split, clean, tmp_path,
                                                     record_property):
    a = workers()
    # slower segments than the other scenarios: the fault must come before the last shard is done (with
    # 0.4 s, a loaded machine once removed the node as the run ended, and its actor's record was "dead")
    # (the restarted actor has no need to be slow: the rest of the run goes at 0.1 s a segment)
    proc = _start(cluster, synth_split.parent, tmp_path, "--stall-timeout", "120", "--matter-option", "delay=1.5",
                  "--matter-option", "restarted_delay=0.1")
    _wait_done_markers(proc, tmp_path / SPLIT)
    cluster.remove_node(a, allow_graceful=False)
    assert len(list((tmp_path / SPLIT / "done").glob("*.json"))) < len(list((clean / "done").glob("*.json")))
    time.sleep(3)                                         # the actor is down, its chunks wait
    b = workers()                                         # the autoscaler's new node: the actor restarts there
    rc, log, took = _finish(proc, timeout=240)
    record_property("seconds_from_fault_to_end", round(took, 1))  # README: Faults, measured
    assert rc == 0, log[-3000:]
    # the restarted actor took the work (the only GPU left is the new node's); whether the driver saw it
    # down in between ("is down" ... "is back") depends on when its pings fell
    run = json.loads((tmp_path / SPLIT / schema.RUN_JSON).read_text())
    where = [r["info"].get("node_id") for r in run[schema.RUN_ACTORS]]
    assert where == [b.node_id] != [a.node_id], (run[schema.RUN_ACTORS], log[-3000:])
    _same_as(clean, tmp_path / SPLIT)


def test_the_node_of_a_shard_writer_is_removed(cluster, workers, synth_split, clean, tmp_path, record_property):
    a = workers(resources={"spill": 1})                   # the writers can only live here
    workers()
    proc = _start(cluster, synth_split.parent, tmp_path, "--writer-resource", "spill", "--stall-timeout", "120")
    _wait_done_markers(proc, tmp_path / SPLIT)
    cluster.remove_node(a, allow_graceful=False)          # the writer (with its open shards) goes with it
    time.sleep(2)
    workers(resources={"spill": 1})                       # a new node for a new writer
    rc, log, took = _finish(proc, timeout=240)
    record_property("seconds_from_fault_to_end", round(took, 1))  # README: Faults, measured
    assert rc == 0, log[-3000:]
    assert "shard writer was lost" in log and "redoing it" in log, log[-3000:]
    _same_as(clean, tmp_path / SPLIT)                     # no shard was marked done with lost samples
