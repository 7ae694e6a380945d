"""`python -m mava export`: a masklet's windows stitched into one alpha sequence, PNGs and real H.264.

Crafted windows check the cross-fade and the seam figures by hand; the real job output (conftest
`job_output`, guided matter, with ground truth) checks files, the MP4s read back with PyAV, the 24 fps
timeline and that the seam of eval's join equals what `mava eval` reports for the same clip."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from mava import export as ex
from mava import manifest as mf
from mava.__main__ import main
from mava.eval import evaluate


def _win(key: str, ann: list[int], value: float, h: int = 4, w: int = 6) -> ex.Window:
    a = np.full((len(ann), h, w), round(value * 255), np.uint8)
    return ex.Window(key, ann, [4 * x for x in ann], a)


def test_crossfade_weights_by_hand():
    # windows 0..5 (alpha 0.2) and 3..8 (alpha 0.8): 3 shared frames, later weight 1/4, 2/4, 3/4
    st = ex.stitch("v", "manual", 1, [_win("b", list(range(3, 9)), 0.8), _win("a", list(range(6)), 0.2)])
    assert st.ann == list(range(9)) and st.video == [4 * a for a in range(9)] and st.overlaps == [3]
    a, b = 51 / 255, 204 / 255
    want = [a, a, a, 0.75 * a + 0.25 * b, 0.5 * a + 0.5 * b, 0.25 * a + 0.75 * b, b, b, b]
    assert np.allclose(st.alpha[:, 0, 0], want, atol=1e-6)
    assert np.allclose(st.first_wins[:, 0, 0], [a] * 6 + [b] * 3)  # eval's join: first window wins
    assert st.starts == [6] and st.gaps == []


def test_seam_by_hand():
    st = ex.stitch("v", "manual", 1, [_win("a", list(range(6)), 0.2), _win("b", list(range(3, 9)), 0.8)])
    rep = ex.seam_report(st)  # static reference: RMS change x1e2
    step = (204 - 51) / 255
    assert rep["first_wins"]["dtssd_boundary"] == pytest.approx(step * 100)  # the whole jump in one pair
    assert rep["first_wins"]["dtssd_inside"] == pytest.approx(0)
    assert rep["crossfade"]["dtssd_boundary"] == pytest.approx(step / 4 * 100)  # a quarter per frame
    assert rep["crossfade"]["boundary_pairs"] == 1 and rep["crossfade"]["inside_pairs"] == 7


def test_gaps_and_upsampling_by_hand():
    st = ex.stitch("v", "manual", 1, [_win("a", [0, 1, 2], 0.0), _win("b", [4, 5], 1.0)])
    assert st.gaps == [3] and st.ann == [0, 1, 2, 4, 5]
    rep = ex.seam_report(st)
    assert rep["first_wins"]["boundary_pairs"] == 0  # the gap breaks the chain: no pair across it
    frames, near = ex.upsample(st, "nearest")
    assert frames == list(range(0, 21))
    # video 8 (ann 2) .. 16 (ann 4): 9..12 hold ann 2 (ties go earlier), 13..15 hold ann 4
    assert [float(near[f][0, 0]) for f in range(8, 17)] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    _, lin = ex.upsample(st, "linear")
    assert float(lin[12][0, 0]) == pytest.approx(0.5) and float(lin[10][0, 0]) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def exported(job_output, tmp_path_factory):
    d, gt = job_output
    out = tmp_path_factory.mktemp("export") / "sav_000002_m001"
    rc = main(["export", str(d), "--video-id", "sav_000002", "--masklet", "1", "--out", str(out), "--fps", "24",
               "--gt", str(gt)])
    assert rc == 0
    return d, gt, out, json.loads((out / ex.REPORT_NAME).read_text())


def _rows(d):
    return sorted((r for r in mf.ok_rows(str(d)) if r["video_id"] == "sav_000002" and r["masklet_id"] == 1),
                  key=lambda r: r["start"])


def test_png_sequence_over_the_annotated_frames(exported):
    d, _, out, rep = exported
    rows = _rows(d)
    covered = sorted({a for r in rows for a in r["ann_frames"]})
    assert len(rows) >= 2 and rep["windows"] == [r["key"] for r in rows]
    pngs = sorted(out.glob(f"{ex.ALPHA_DIR}/*.png"))
    assert [int(p.stem) for p in pngs] == covered and rep["frames"] == len(covered)
    _, windows = ex.load_windows(str(d), "sav_000002", 1)
    for p in pngs:
        a = int(p.stem)
        got = np.asarray(Image.open(p))
        assert got.shape == (rep["height"], rep["width"])
        vals = [w.alpha[w.ann.index(a)] for w in windows if a in w.ann]
        if len(vals) == 1:  # one window: its matte, unchanged
            assert np.array_equal(got, vals[0])
        else:  # an overlap: a convex combination of the two windows' mattes
            lo, hi = np.minimum(*vals).astype(int), np.maximum(*vals).astype(int)
            assert ((got >= lo - 1) & (got <= hi + 1)).all()


def test_mp4_reads_back(exported):
    _, _, out, rep = exported
    for name, pattern, fps in ((ex.VIDEO_NAME, ex.ALPHA_DIR, 6), (ex.VIDEO_24_NAME, ex.ALPHA_24_DIR, 24)):
        with av.open(str(out / name)) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264" and s.average_rate == fps
            frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
        pngs = [np.asarray(Image.open(p)) for p in sorted(out.glob(f"{pattern}/*.png"))]
        assert len(frames) == len(pngs) > 0
        diff = np.abs(np.stack(frames).astype(int) - np.stack(pngs))
        assert diff.mean() < 1.0 and diff.max() <= 16, (name, diff.mean(), diff.max())
        assert np.stack(frames).max() > 200  # a real matte, not a blank video
    v = rep["video_24fps"]
    assert v["frames"] == v["video_frames"][1] - v["video_frames"][0] + 1


def test_24fps_holds_the_nearest_annotated_matte(exported):
    d, _, out, rep = exported
    ann_png = {int(p.stem): np.asarray(Image.open(p)) for p in out.glob(f"{ex.ALPHA_DIR}/*.png")}
    video_of = {a: v for r in _rows(d) for a, v in zip(r["ann_frames"], r["video_frames"])}
    for p in sorted(out.glob(f"{ex.ALPHA_24_DIR}/*.png")):
        v = int(p.stem)
        a = min(video_of, key=lambda a: (abs(video_of[a] - v), a))
        assert np.array_equal(np.asarray(Image.open(p)), ann_png[a]), v


def test_seam_of_evals_join_equals_mava_eval(exported):
    d, gt, _, rep = exported
    res = evaluate(str(d), str(gt), baselines=())
    clip = next(c for c in res.clips if c.clip == "sav_000002_m001")
    assert rep["seam_reference"] == "ground truth"
    fw = rep["seam"]["first_wins"]
    assert fw["dtssd_boundary"] == pytest.approx(clip.methods["matte"]["dtssd_boundary"], rel=1e-6)  # float32 mattes here, float64 in eval
    assert fw["dtssd_inside"] == pytest.approx(clip.methods["matte"]["dtssd_inside"], rel=1e-6)  # float32 mattes here, float64 in eval


def test_unknown_masklet_is_one_line(job_output, tmp_path, capsys):
    rc = main(["export", str(job_output[0]), "--video-id", "sav_000002", "--masklet", "9", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no ok samples of video 'sav_000002' masklet 9")
