"""CPU matters: contract, fallbacks, registry, and the quality property against ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.matter_quality import clean_masks, degraded_masks, mad, synth_clips
from models.base import MatterConfig, available_matters, build_matter, to_uint8
from models.cpu import ClosedFormMatter, GuidedMatter, MaskMatter, trimap_regions

CPU = ("mask", "guided", "closed-form")


@pytest.fixture(scope="module")
def soft_clip():
    frames, alpha = synth_clips(videos=1, frames=8, sizes=("160x120",), seed=3)[0]  # feathered ellipse
    return frames, alpha


def test_registry_names():
    assert set(CPU) | {"videomama"} <= set(available_matters())
    assert isinstance(build_matter("mask", MatterConfig()), MaskMatter)
    assert isinstance(build_matter("guided", MatterConfig()), GuidedMatter)
    assert isinstance(build_matter("closed-form", MatterConfig()), ClosedFormMatter)
    with pytest.raises(KeyError):
        build_matter("nope")


@pytest.mark.parametrize("name", CPU)
def test_contract_shape_range_dtype(name, soft_clip):
    frames, alpha = soft_clip
    out = build_matter(name, MatterConfig()).refine(frames, clean_masks(alpha))
    assert out.shape == alpha.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    d = build_matter(name, MatterConfig()).describe()
    assert d["name"] == name and d["deterministic"] is True


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_masks_fall_back_to_the_mask(name, fill, soft_clip):
    frames, _ = soft_clip
    masks = np.full(frames.shape[:3], fill)
    out = build_matter(name, MatterConfig()).refine(frames, masks)
    np.testing.assert_array_equal(out, masks.astype(np.float32))


@pytest.mark.parametrize("name", ["guided", "closed-form"])
def test_tiny_mask_and_no_sure_foreground_fall_back(name, soft_clip):
    frames, _ = soft_clip
    masks = np.zeros(frames.shape[:3], bool)
    masks[0, 10:12, 10:12] = True                 # 4 px: below min_area_px
    masks[1, 50:56, 40:140] = True                # a thin strip: erosion leaves no sure foreground
    matter = build_matter(name, MatterConfig())
    out = matter.refine(frames, masks)
    np.testing.assert_array_equal(out[0], masks[0].astype(np.float32))
    assert out.shape == masks.shape and 0 <= out.min() and out.max() <= 1
    if name == "closed-form":
        r = matter.band.width(int(masks[1].sum()), *masks.shape[1:])
        assert not trimap_regions(masks[1], r)[0].any()
        np.testing.assert_array_equal(out[1], masks[1].astype(np.float32))


def test_changes_stay_inside_the_band(soft_clip):
    frames, alpha = soft_clip
    masks = clean_masks(alpha)
    for name in ("guided", "closed-form"):
        matter = build_matter(name, MatterConfig())
        band = matter.band
        out = matter.refine(frames, masks)
        for i in range(len(masks)):
            r = band.width(int(masks[i].sum()), *masks.shape[1:])
            fg, bg = trimap_regions(masks[i], r)
            assert (out[i][fg] == 1).all() and (out[i][bg] == 0).all()


@pytest.fixture(scope="module")
def synth_split():
    """Synthetic SA-V split (pipeline.synth) with GT alpha: feathered, hair-like, motion-blurred objects."""
    return synth_clips(videos=1, frames=24, sizes=("848x480",), seed=0)  # SA-V resolution, 6 frames


@pytest.mark.parametrize("kind", ["clean", "8x-degraded"])
def test_refiners_beat_the_mask_on_the_synthetic_split(kind, synth_split):
    """Quality property (not a timing): MAD of guided and closed-form <= 0.8 x MAD of the mask."""
    make = clean_masks if kind == "clean" else degraded_masks
    pairs = [(frames, make(alpha), alpha) for frames, alpha in synth_split]
    base = sum(mad(build_matter("mask").refine(f, m), a) for f, m, a in pairs)
    assert base > 1e-3
    for name in ("guided", "closed-form"):
        matter = build_matter(name)
        ratio = sum(mad(matter.refine(f, m), a) for f, m, a in pairs) / base
        assert ratio <= 0.8, f"{name} on {kind} masks: MAD ratio {ratio:.3f}"


def test_to_uint8_rounds_and_clips():
    a = np.array([0.0, 0.5 / 255, 0.4, 1.0, 1.2, -0.1], np.float32)
    np.testing.assert_array_equal(to_uint8(a), [0, 0, 102, 255, 255, 0])
    out = build_matter("mask").refine_batch_uint8([(np.zeros((1, 4, 4, 3), np.uint8), np.eye(4, dtype=bool)[None])])
    assert out[0].dtype == np.uint8 and out[0].max() == 255
