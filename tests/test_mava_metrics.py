"""Matting metrics: hand-computable cases and agreement with straightforward reimplementations."""

from collections import deque

import numpy as np
import pytest

from mava import metrics


def _rand_matte(rng, h=14, w=17):
    a = rng.random((h, w))
    a[a < 0.3] = 0.0
    a[a > 0.8] = 1.0
    return a


def test_identical_mattes_score_zero():
    g = _rand_matte(np.random.default_rng(0))
    assert metrics.mad(g, g) == 0 and metrics.mse(g, g) == 0
    assert metrics.grad(g, g) == 0 and metrics.conn(g, g) == 0
    assert metrics.mad_band(g, g) == 0
    v = np.stack([g, g[::-1], g])
    assert metrics.dtssd(v, v) == 0


@pytest.mark.parametrize("d", [0.05, 0.2])
def test_constant_offset(d):
    g = np.full((10, 12), 0.3)
    g[2:6, 3:9] = 0.6
    p = g + d
    assert metrics.mad(p, g) == pytest.approx(d * 1e3)
    assert metrics.mse(p, g) == pytest.approx(d * d * 1e3)
    # A constant offset on every frame changes nothing over time; an offset on one frame does.
    assert metrics.dtssd(np.stack([p, p, p]), np.stack([g, g, g])) == pytest.approx(0, abs=1e-9)
    pairs = metrics.dtssd_pairs(np.stack([g, p, p]), np.stack([g, g, g]))
    assert pairs == pytest.approx([d * 1e2, 0.0])


def test_conn_hand_case():
    g = np.ones((5, 6))
    p = np.zeros((5, 6))
    # No pixel survives any threshold in both: l = 0 everywhere, phi(g) = 0, phi(p) = 1.
    assert metrics.conn(p, g) == pytest.approx(30 / 1e3)


def _naive_filter(a, k):
    """Correlation with replicated borders, one pixel at a time."""
    r = k.shape[0] // 2
    pad = np.pad(a, r, mode="edge")
    out = np.zeros_like(a)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            out[y, x] = (pad[y:y + 2 * r + 1, x:x + 2 * r + 1] * k).sum()
    return out


def _naive_grad(p, g, sigma=1.4):
    half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * 1e-2))))
    size = 2 * half + 1
    fx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            xg, yd = i - half, j - half
            gauss = np.exp(-xg ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
            gd = np.exp(-yd ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
            fx[i, j] = gauss * (-yd * gd / sigma ** 2)
    fx /= np.sqrt((fx ** 2).sum())
    fy = fx.T

    def mag(a):
        a = (a - a.min()) / (a.max() - a.min())
        return np.sqrt(_naive_filter(a, fx) ** 2 + _naive_filter(a, fy) ** 2)

    return ((mag(p) - mag(g)) ** 2).sum() / 1e3


def _naive_conn(p, g, step=0.1):
    h, w = g.shape
    l_map = -np.ones_like(g)
    for i in range(1, 11):
        t = i * step
        both = (g >= t - 1e-12) & (p >= t - 1e-12)
        seen = np.zeros_like(both)
        best = []
        for y in range(h):
            for x in range(w):
                if both[y, x] and not seen[y, x]:
                    comp, q = [], deque([(y, x)])
                    seen[y, x] = True
                    while q:
                        cy, cx = q.popleft()
                        comp.append((cy, cx))
                        for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                            if 0 <= ny < h and 0 <= nx < w and both[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                q.append((ny, nx))
                    if len(comp) > len(best):
                        best = comp
        omega = np.zeros_like(both)
        for cy, cx in best:
            omega[cy, cx] = True
        l_map[(l_map == -1) & ~omega] = (i - 1) * step
    l_map[l_map == -1] = 1
    dp, dg = p - l_map, g - l_map
    phi_p = np.where(dp >= 0.15, 1 - dp, 1)
    phi_g = np.where(dg >= 0.15, 1 - dg, 1)
    return np.abs(phi_p - phi_g).sum() / 1e3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grad_and_conn_match_naive(seed):
    rng = np.random.default_rng(seed)
    g = _rand_matte(rng)
    p = np.clip(g + rng.normal(0, 0.15, g.shape), 0, 1)
    assert metrics.grad(p, g) == pytest.approx(_naive_grad(p, g), rel=1e-9)
    # Quantise to multiples of 1/255 like decoded PNGs so thresholds are not hit exactly.
    g8, p8 = np.round(g * 255) / 255, np.round(p * 255) / 255
    assert metrics.conn(p8, g8) == pytest.approx(_naive_conn(p8, g8), rel=1e-9)
    assert metrics.conn(p8, g8) > 0 and metrics.grad(p, g) > 0


def test_dtssd_matches_formula():
    rng = np.random.default_rng(4)
    g, p = rng.random((4, 6, 7)), rng.random((4, 6, 7))
    want = [np.sqrt((((p[t] - p[t - 1]) - (g[t] - g[t - 1])) ** 2).sum() / g[t].size) * 100 for t in range(1, 4)]
    assert metrics.dtssd_pairs(p, g) == pytest.approx(want)
    assert metrics.dtssd(p, g) == pytest.approx(np.mean(want))


def test_transition_band_and_mad_band():
    g = np.zeros((40, 40))
    g[10:30, 10:30] = 1.0
    band = metrics.transition_band(g, radius=3)
    assert not band[20, 20] and not band[0, 0] and band[10, 20] and band[9, 20] and band[12, 20]
    p = g.copy()
    p[0, 0] = 1.0  # an error outside the band counts in MAD but not in the band MAD
    assert metrics.mad_band(p, g, radius=3) == 0 and metrics.mad(p, g) > 0
    p2 = g.copy()
    p2[10, 20] = 0.5
    assert metrics.mad_band(p2, g, radius=3) == pytest.approx(0.5 / band.sum() * 1e3)


def test_clip_scores_shapes_and_mismatch():
    rng = np.random.default_rng(5)
    g = rng.random((3, 8, 9))
    s = metrics.clip_scores(np.clip(g + 0.1, 0, 1), g)
    assert s.frames == 3 and s.mad > 0 and s.dtssd >= 0
    with pytest.raises(ValueError):
        metrics.mad(g[0], g[0, :4])
