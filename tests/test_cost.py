"""Cost model: counts from annotation files, checked against a direct decode of the real fixture."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
from pycocotools import mask as mask_utils

from pipeline import cost
from pipeline.reader import ReaderConfig


def test_counts_match_direct_decode(fixtures_dir, tmp_path):
    split = tmp_path / "sav_train"
    split.mkdir()
    src = fixtures_dir / "sav" / "sav_000001_manual.json"
    shutil.copy(src, split)
    (split / "sav_000001.mp4").write_bytes(b"")  # listed, never opened
    counts = cost.count_split(str(split), ReaderConfig(), progress=False)

    d = json.loads(src.read_text())
    spans = []
    for j in range(len(d["masklet_id"])):
        vis = [i for i, frame in enumerate(d["masklet"]) if mask_utils.area(frame[j]) > 0]
        spans.append(vis[-1] - vis[0] + 1)
    assert counts.masklets == {"manual": len(spans), "auto": 0}
    assert counts.span_frames == sum(spans)
    # windows of 12 tile each span, the last shifted back: ceil(n/12) full windows, or one short one
    assert counts.segment_frames == sum(n if n <= 12 else 12 * math.ceil(n / 12) for n in spans)
    assert counts.segments == sum(math.ceil(n / 12) for n in spans)
    text = cost.report(counts, {"r": 10.0}, scale=1000)
    hours = counts.segment_frames * 1000 / 10.0 / 3600
    assert f"{hours:,.1f}" in text


def test_cli_prints_rates(fixtures_dir, tmp_path, capsys):
    split = tmp_path / "sav_train"
    split.mkdir()
    shutil.copy(fixtures_dir / "sav" / "sav_000001_manual.json", split)
    (split / "sav_000001.mp4").write_bytes(b"")
    assert cost.main(["--split", "sav_train", "--data-root", str(tmp_path), "--rate", "25", "--rate", "7.2"]) == 0
    out = capsys.readouterr().out
    assert "25 frames/s" in out and "7.2 frames/s" in out and "manual 5" in out
    assert np.isfinite(float(out.split("frames/s per GPU [--rate 25]: ")[1].split()[0].replace(",", "")))
