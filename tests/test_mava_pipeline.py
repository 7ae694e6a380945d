"""mava tools on the output of the real job: `pipeline.synth` split -> `pipeline.run --matter mask`.

Skipped until pipeline.synth and the job's reader are on the branch (they land on main separately).
"""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("pipeline.synth")
pytest.importorskip("pipeline.reader")

from mava import manifest as mf  # noqa: E402
from mava.eval import evaluate  # noqa: E402
from mava.loaders import ClipConfig, RandomAccessClips, StreamingClips  # noqa: E402
from mava.verify import verify  # noqa: E402


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def job_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("mava_job")
    data = root / "data"
    subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(data), "--videos", "3"], check=True,
                   cwd=REPO)
    splits = sorted(p.name for p in data.iterdir() if p.is_dir() and p.name.startswith("sav_"))
    assert splits, f"no split folder under {data}"
    split = splits[0]
    out = root / "out"
    subprocess.run([sys.executable, "-m", "pipeline.run", "--split", split, "--data-root", str(data), "--out",
                    str(out), "--matter", "mask", "--videos-per-shard", "1", "--num-cpus", "2", "--no-progress",
                    "--backend", "pyav", "--address", "local"], check=True, cwd=REPO)
    gts = sorted(data.rglob("gt_alpha"))
    return out / split, (gts[0] if gts else None)


def test_verify_and_loaders_on_job_output(job_output):
    d, _ = job_output
    assert verify(str(d)).passed
    keys = {r["key"] for r in mf.ok_rows(str(d))}
    assert keys
    cfg = ClipConfig(clip_len=4, size=(64, 64), crop_scale=(0.5, 1.0), hflip=0.5, seed=3)
    ds = StreamingClips(str(d), cfg, shuffle_buffer=4)
    seen = Counter()
    streamed = {}
    for c in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
        seen[c["key"]] += 1
        streamed[c["key"]] = c
    assert set(seen) == keys and set(seen.values()) == {1}
    ra = RandomAccessClips(str(d), cfg)
    for k, s in streamed.items():
        r = ra.by_key(k)
        assert all(torch.equal(r[f], s[f]) for f in ("frames", "alpha", "mask"))
        # the mask matter: alpha is the input mask (same crop, both resized)
        assert (r["alpha"] - r["mask"]).abs().mean() < 0.05


def test_eval_on_job_output(job_output):
    d, gt = job_output
    if gt is None:
        pytest.skip("the synthetic split has no gt_alpha/")
    rep = evaluate(str(d), str(gt), baselines=("mask",))
    assert rep.frames > 0
    # the mask matter's matte is the mask itself
    assert rep.overall["matte"]["mad"] == pytest.approx(rep.overall["mask"]["mad"], abs=1e-6)
