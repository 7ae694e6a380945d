"""Shared fixtures: the real fixtures folder and a small generated SA-V train split."""

from __future__ import annotations

from pathlib import Path

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
