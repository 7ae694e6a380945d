"""`ray start --head`, then the README's `ray job submit` command: same output as the direct run."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_job import REPO, SPLIT, run_cli, tree_bytes

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started the way a cluster admin does, stopped (with all its processes) afterwards."""
    port, dash, agent = _free_port(), _free_port(), _free_port()
    # token authentication (Ray's default) with a token of this test's own, for the head and the client
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp = Path(f"/tmp/rh{os.getpid()}")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--dashboard-port", str(dash),
         "--include-dashboard", "true", "--num-cpus", "2",
         # the job agent on a port of its own: another local cluster on this machine (the test session's job
         # server) holds Ray's default 52365, and a head whose agent cannot listen takes no job
         "--dashboard-agent-listen-port", str(agent), "--temp-dir", str(temp), "--disable-usage-stats"],
        cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                break
            if time.time() > deadline or head.poll() is not None:
                pytest.fail(f"ray head did not come up: {probe.stderr.decode()[-2000:]}")
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_job_submit_same_output_as_direct_run(synth_split, ray_head, tmp_path):
    address, env = ray_head
    args = ["--split", SPLIT, "--data-root", str(synth_split.parent), "--out", str(tmp_path / "submitted"),
            "--matter", "mask", "--videos-per-shard", "1", "--no-progress"]
    deadline = time.time() + 60
    while True:   # the head answers `ray job list` before its job agent is up: Ray says "try again later"
        res = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--runtime-env", "jobs/runtime_env.yaml",
             "--", "python", "-m", "pipeline.run", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if res.returncode == 0 or "No available agent" not in res.stderr + res.stdout or time.time() > deadline:
            break
        time.sleep(3)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "succeeded" in (res.stdout + res.stderr).lower()
    direct = run_cli(synth_split.parent, tmp_path / "direct", "--matter", "mask")
    assert direct.returncode == 0, direct.stderr[-2000:]
    submitted = tree_bytes(tmp_path / "submitted" / SPLIT)
    assert submitted and submitted == tree_bytes(tmp_path / "direct" / SPLIT)
