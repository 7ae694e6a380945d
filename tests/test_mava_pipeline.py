"""mava reading what the real job wrote (conftest `job_output`: `pipeline.run --matter guided` on the
generated split with two bad inputs mixed in)."""

import numpy as np
import pytest

from mava import manifest as mf
from mava import schema
from mava.eval import evaluate
from mava.loaders import ClipConfig, RandomAccessClips
from mava.verify import verify


def test_verify_full_passes_without_frames(job_output_alpha_only):
    # the jpg output is verified by tests/test_mava_cli.py through the CLI
    rows = mf.ok_rows(str(job_output_alpha_only))
    rep = verify(str(job_output_alpha_only), full=True)
    assert rep.passed, rep
    assert rep.samples_checked == len(rows) and rep.pngs_checked == sum(r["num_frames"] for r in rows)


def test_quality_columns_match_decoded_mattes(job_output):
    """The manifest's quality signals, recomputed from the mattes and masks mava decodes."""
    d, _ = job_output
    ra = RandomAccessClips(str(d), ClipConfig(fields=("alpha", "mask")))
    rows = mf.ok_rows(str(d))
    assert len(rows) == len(ra) == 14
    for r in rows:
        c = ra.by_key(r["key"])
        a, m = c["alpha"][:, 0].numpy().astype(np.float64), c["mask"][:, 0].numpy().astype(bool)
        assert a.shape == (r["num_frames"], r["height"], r["width"])
        hard = a > 0.5
        assert r["mean_alpha"] == pytest.approx(a.mean(), abs=1e-5)
        assert r["semi_fraction"] == pytest.approx(((a > schema.SEMI_LO) & (a < schema.SEMI_HI)).mean(), abs=1e-5)
        assert r["mask_iou"] == pytest.approx((hard & m).sum() / max(1, (hard | m).sum()), abs=1e-5)
        assert r["mask_area"] == pytest.approx(m.mean(), abs=1e-5)
        # the guided matte is soft (not the binary mask) yet follows the input mask
        assert r["semi_fraction"] > 0.01 and r["mask_iou"] > 0.6


def test_guided_matte_beats_the_input_mask_on_gt(job_output):
    d, gt = job_output
    rep = evaluate(str(d), str(gt), baselines=("mask",))
    assert rep.frames > 0 and rep.missing_gt == 0
    for k in ("mad", "mse", "dtssd"):
        assert rep.overall["matte"][k] < rep.overall["mask"][k], k
