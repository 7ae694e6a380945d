"""Shared fixtures: the real fixtures folder and a small generated SA-V train split."""

from __future__ import annotations

import os
from pathlib import Path

# Ray on loopback only (its default binds the machine's address): every test's Ray traffic stays here;
# set before anything imports ray, inherited by the job subprocesses and Ray's own processes
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# torch's OpenMP threads wait for work asleep, not spinning: a test's two torch threads beside any other
# busy process (a Ray actor, another xdist worker) spun away the CPU both needed (tests/test_videomama.py
# beside one CPU hog: 217 s, 18 s with this); set before torch is imported, inherited by subprocesses
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures``: sav/sav_000001_manual.json and video/bedroom.mp4."""
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def synth_split(tmp_path_factory) -> Path:
    """A generated train-layout split ``<root>/sav_train`` (nested sav_000/): 3 videos of 60 frames
    (15 annotated), 160x96 landscape / 96x160 portrait, manual + auto JSON, gt_alpha/ PNGs and
    synth_meta.json. Object 1 disappears for a while, object 2 appears late."""
    from pipeline import synth

    root = tmp_path_factory.mktemp("synth_root")
    bg = str(synth.DEFAULT_BG) if synth.DEFAULT_BG.exists() else ""
    specs = synth.make_specs(3, 60, seed=1, sizes=["160x96", "96x160"], background=bg)
    return synth.generate_split(root, specs, "sav_train")


@pytest.fixture(scope="session")
def _mava_jobs(synth_split, tmp_path_factory) -> dict[str, Path]:
    """The real job (``pipeline.run --matter guided``) on a copy of `synth_split` with two bad inputs
    mixed in (a video whose mp4 is missing, one masklet emptied), plus a ``--frames none`` run of
    its first video, in the shared job server (``tests.job_cli.JobServer``)."""
    import json
    import shutil

    import numpy as np

    from pipeline import sav

    root = tmp_path_factory.mktemp("mava_job")
    data = root / "data"
    split = data / synth_split.name
    shutil.copytree(synth_split, split, ignore=shutil.ignore_patterns("gt_alpha"))
    # bad inputs: sav_000004 has annotations but no video; masklet 2 of sav_000003 is never visible
    d = json.loads((split / "sav_000" / "sav_000001_manual.json").read_text())
    d["video_id"] = "sav_000004"
    (split / "sav_000" / "sav_000004_manual.json").write_text(json.dumps(d))
    p = split / "sav_000" / "sav_000003_manual.json"
    d = json.loads(p.read_text())
    h, w = int(d["video_height"]), int(d["video_width"])
    for frame in d["masklet"]:
        frame[2] = sav.encode_mask(np.zeros((h, w), bool))
    p.write_text(json.dumps(d))

    from tests.job_cli import SPLIT, run_cli

    assert split.name == SPLIT
    for out, extra in [("out", []), ("out_noframes", ["--frames", "none", "--limit-videos", "1"])]:
        res = run_cli(data, root / out, "--matter", "guided", "--log-level", "WARNING", *extra, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    return {"jpg": root / "out" / split.name, "none": root / "out_noframes" / split.name,
            "gt": synth_split / "gt_alpha"}


@pytest.fixture(scope="session")
def job_output(_mava_jobs) -> tuple[Path, Path]:
    """(out split dir, gt_alpha dir) of the real job with the guided CPU matter on `synth_split`
    (3 videos, 1 per shard) plus a 4th video without mp4 (a VideoMissing row, a shard with no sample)
    and masklet 2 of sav_000003 emptied (an EmptyMasklet row). Treat as read-only: copy to modify."""
    return _mava_jobs["jpg"], _mava_jobs["gt"]


@pytest.fixture(scope="session")
def job_output_alpha_only(_mava_jobs) -> Path:
    """Out split dir of the same job with ``--frames none`` on the first video only (read-only)."""
    return _mava_jobs["none"]


def pytest_sessionfinish(session, exitstatus):
    """Stop the shared job server (and its local Ray session), if a test started it."""
    from tests.job_cli import JobServer

    JobServer.close_shared()


#: the longest files, about longest first (seconds of test time each on two workers, ``--durations=0``:
#: executor 152, trust 122, cluster 140, job 111, then 57 down to 28), handed out first: ``make test``
#: gives whole files to two workers (``--dist loadfile``), and a long file started last would run alone
#: at the end. The executor's watchdog tests and the node-loss scenarios of test_cluster do not start
#: together.
LONG_FILES = ("test_executor.py", "test_trust.py", "test_cluster.py", "test_job.py", "test_s3.py",
              "test_sam2_matte.py", "test_hostile.py", "test_videomama_parity.py", "test_compile_cache.py",
              "test_exit_codes.py", "test_gpu_bench.py", "test_job_submit.py", "test_qc.py")


@pytest.hookimpl(optionalhook=True)   # an xdist hook: pytest without xdist (-p no:xdist) still runs
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` handing out the files of :data:`LONG_FILES` first, in that order (xdist's own
    order, kept for the other files, is by number of tests: test_hostile's 40 quick ones came first)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    rank = {name: i for i, name in enumerate(LONG_FILES)}

    class LongFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            for scope in sorted(self.workqueue, key=lambda scope: rank.get(Path(scope).name, len(rank))):
                self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)
