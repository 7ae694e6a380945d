"""jobs/cluster.yaml fetches the weights on each node (jobs/fetch_weights.sh), into the folders the README
passes to the job; no laptop mount of weights. The bucket path of the script runs here for real on the
tiny checkpoint in the release layout (file:// here; s3:// against moto in tests/test_s3.py), and the
fetched folders load through the production VideoMaMa matter. (The Hub path needs the network.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "fetch_weights.sh"
CKPT, BASE = "videomama", "stable-video-diffusion-img2vid-xt"


def fetch(dest: Path, source: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = (env or os.environ) | {"MAVA_WEIGHTS_FROM": source, "MAVA_PYTHON": sys.executable,
                               "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(SCRIPT), str(dest)], env=e, capture_output=True, text=True, timeout=300)


def bucket_layout(tiny: tuple[Path, Path], root: Path) -> Path:
    """The documented bucket layout (a mirror of /models) from the tiny checkpoint folders."""
    ckpt, base = tiny
    shutil.copytree(ckpt / "unet", root / CKPT / "unet")
    shutil.copytree(base / "vae", root / BASE / "vae")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    from models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"))


def test_cluster_yaml_fetches_weights_on_each_node():
    cfg = yaml.safe_load((REPO / "jobs" / "cluster.yaml").read_text())
    mounts = cfg.get("file_mounts") or {}
    # only the jobs/ scripts and the Hub token travel from the laptop, never a weights folder
    assert set(mounts.values()) <= {"./jobs", "~/.cache/huggingface/token"}, mounts
    assert not any("model" in k for k in mounts)
    setup = "\n".join(cfg["setup_commands"])
    assert "fetch_weights.sh /models" in setup and "~/mava-jobs" in setup
    assert "MAVA_WEIGHTS_FROM=" in setup


def test_folder_names_match_the_readme():
    readme = (REPO / "README.md").read_text()
    flags = set(re.findall(r"--checkpoint (\S+) --base-model (\S+)", readme))
    assert ("/models/videomama", "/models/stable-video-diffusion-img2vid-xt") in flags
    script = SCRIPT.read_text()
    assert f"CKPT={CKPT}" in script and f"BASE={BASE}" in script
    assert "SammyLim/VideoMaMa" in script and "stabilityai/stable-video-diffusion-img2vid-xt" in script
    # the hf CLI of the pinned huggingface_hub knows the flags the script uses
    help_text = subprocess.run([str(Path(sys.executable).parent / "hf"), "download", "--help"],
                               capture_output=True, text=True).stdout
    assert "--include" in help_text and "--local-dir" in help_text


def test_fetch_from_a_bucket_loads_in_the_matter(tiny, tmp_path):
    src = bucket_layout(tiny, tmp_path / "bucket" / "models")
    dest = tmp_path / "node" / "models"
    res = fetch(dest, src.as_uri())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"--checkpoint {dest / CKPT} --base-model {dest / BASE}"
    for sub, orig in ((dest / CKPT / "unet", tiny[0] / "unet"), (dest / BASE / "vae", tiny[1] / "vae")):
        assert sorted(p.name for p in sub.iterdir()) == sorted(p.name for p in orig.iterdir())
        for p in orig.iterdir():
            assert (sub / p.name).read_bytes() == p.read_bytes()
    assert not list(dest.glob(".partial-*"))  # no temporary folder left

    from models.base import MatterConfig
    import torch

    from models.checkpoint import select_weights, weights_sha256
    from models.videomama import VideoMaMaMatter

    m = VideoMaMaMatter(MatterConfig(checkpoint=str(dest / CKPT), base_model=str(dest / BASE), device="cpu"))
    originals = [select_weights(tiny[0] / "unet", torch.float32, "unet"),
                 select_weights(tiny[1] / "vae", torch.float32, "vae")]
    assert m.weights_hash() == weights_sha256(originals)

    again = fetch(dest, src.as_uri())  # a node restart: kept, not fetched again
    assert again.returncode == 0 and f"kept {dest / CKPT / 'unet'}" in again.stdout


def test_fetch_refuses_an_incomplete_source(tiny, tmp_path):
    src = bucket_layout(tiny, tmp_path / "bucket")
    for p in (src / BASE / "vae").glob("*.safetensors"):
        p.unlink()  # a half-uploaded bucket
    dest = tmp_path / "node"
    res = fetch(dest, src.as_uri())
    assert res.returncode != 0 and "no config.json and .safetensors" in res.stderr
    assert not (dest / BASE / "vae").exists()  # nothing that looks complete
    res = fetch(tmp_path / "node2", (tmp_path / "nowhere").as_uri())
    assert res.returncode != 0 and "is not a folder" in res.stderr
