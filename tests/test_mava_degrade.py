"""Mask degradations."""

import numpy as np
import cv2
import pytest

from mava import degrade


def _square(h=128, w=128, y0=32, y1=96, x0=32, x1=96):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_downsample_upsample_grid_aligned_square_survives_and_small_blob_vanishes():
    m = _square()
    d8 = degrade.downsample_upsample(m, 8)
    assert d8.shape == m.shape and d8.dtype == bool
    assert (d8 ^ m).sum() < 0.05 * m.sum()
    blob = np.zeros((128, 128), bool)
    blob[60:66, 60:66] = True  # 6x6 object: gone at 32x
    assert degrade.downsample_upsample(blob, 32).sum() == 0
    # 32x is coarser than 8x on a curved shape
    disk = np.zeros((256, 256), np.uint8)
    cv2.circle(disk, (128, 128), 70, 1, -1)
    e8 = (degrade.downsample_upsample(disk, 8) ^ disk.astype(bool)).sum()
    e32 = (degrade.downsample_upsample(disk, 32) ^ disk.astype(bool)).sum()
    assert 0 < e8 < e32


def test_polygon_simplification_keeps_shape_and_holes():
    ring = np.zeros((200, 200), np.uint8)
    cv2.circle(ring, (100, 100), 80, 1, -1)
    cv2.circle(ring, (100, 100), 30, 0, -1)
    s = degrade.simplify_polygons(ring, epsilon=3.0)
    assert not s[100, 100] and s[100, 40]
    iou = (s & ring.astype(bool)).sum() / (s | ring.astype(bool)).sum()
    assert 0.9 < iou < 1.0
    coarse = degrade.simplify_polygons(ring, epsilon=20.0)
    assert (coarse ^ ring.astype(bool)).sum() > (s ^ ring.astype(bool)).sum()
    assert degrade.simplify_polygons(np.zeros((5, 5), bool)).sum() == 0


@pytest.mark.parametrize("r", [1, 4])
def test_erode_dilate_square(r):
    m = _square()
    assert np.array_equal(degrade.erode(m, r), _square(y0=32 + r, y1=96 - r, x0=32 + r, x1=96 - r))
    d = degrade.dilate(m, r)
    assert d[32 - r, 64] and not d[32 - r - 1, 64] and d[64, 96 + r - 1] and not d[64, 96 + r]
    assert not d[32 - r, 32 - r]  # rounded corners (disk element)


def test_degrade_video_applies_each_frame():
    v = np.stack([_square(), _square(y0=0, y1=64)])
    out = degrade.degrade_video(v, "erode5")
    assert out.shape == v.shape and np.array_equal(out[1], degrade.erode(v[1], 5))
    assert set(degrade.DEGRADATIONS) >= {"down8", "down32", "polygon", "erode5", "dilate5"}
