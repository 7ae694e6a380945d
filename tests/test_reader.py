"""Reader on generated splits: round trip against the generator, masklet selection, val layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import synth
from pipeline.reader import Failure, ReaderConfig, list_videos, plan_video, read_segments

BACKENDS = ["decord", "pyav"]


@pytest.fixture(scope="module")
def rendered(synth_split):
    """Re-rendered source frames and GT alpha of every generated video, by video id."""
    out = {}
    for vid, spec in synth.load_specs(synth_split).items():
        frames, alphas = zip(*synth.render(spec))
        out[vid] = (np.stack(frames), np.stack(alphas))
    return out


def test_listing(synth_split):
    refs = list_videos(str(synth_split))
    assert [r.video_id for r in refs] == ["sav_000001", "sav_000002", "sav_000003"]
    assert all(r.auto_url and r.manual_url and r.video_url.endswith(".mp4") for r in refs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip(synth_split, rendered, backend):
    cfg = ReaderConfig(masklets="all", backend=backend)
    n_items = 0
    for ref in list_videos(str(synth_split)):
        plan = plan_video(ref, cfg)
        assert plan.failures == []
        frames_ref, alpha_ref = rendered[ref.video_id]
        assert (plan.height, plan.width, plan.num_frames) == frames_ref.shape[1:3] + (len(frames_ref),)
        items = list(read_segments(plan, cfg))
        assert [i.segment.key for i in items] == [s.key for s in plan.segments]
        for item in items:
            assert not isinstance(item, Failure), item
            s = item.segment
            vf = s.video_frames
            # masks: bit-exact binarised ground truth (and equal to the stored gt_alpha PNGs >= 128)
            assert np.array_equal(item.masks, synth.gt_mask(alpha_ref[vf, s.masklet_id]))
            png = synth_split / synth.GT_DIR / ref.video_id / f"{s.masklet_id:03d}" / f"{s.start:05d}.png"
            assert np.array_equal(item.masks[0], np.asarray(Image.open(png)) >= 128)
            # frames: within H.264 tolerance (CRF 12; yuv420p chroma subsampling of per-pixel grain dominates)
            diff = np.abs(item.frames.astype(np.int16) - frames_ref[vf].astype(np.int16))
            mse = float((diff.astype(np.float64) ** 2).mean())
            psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-9))
            assert diff.mean() < 4 and psnr > 32, (s.key, diff.mean(), psnr)
            n_items += 1
    assert n_items > 0


def test_late_and_gap_masklets(synth_split):
    cfg = ReaderConfig(masklets="manual", segment_len=12)
    plan = plan_video(list_videos(str(synth_split))[0], cfg)
    by_mid = {}
    for s in plan.segments:
        by_mid.setdefault(s.masklet_id, []).append((s.start, s.length, s.overlap))
    # 15 annotated frames: full span -> a window at 0 and one shifted back to 3 (overlap 9)
    assert by_mid[0] == [(0, 12, 0), (3, 12, 9)]
    assert by_mid[1] == [(0, 12, 0), (3, 12, 9)]       # disappears mid-way but the span is full
    late = by_mid[2]
    assert len(late) == 1 and late[0][0] > 0 and late[0][0] + late[0][1] == 15
    items = {i.segment.key: i for i in read_segments(plan, cfg)}
    gap = items["sav_000001_m001_0000"].masks
    assert not gap.reshape(12, -1).any(axis=1).all()   # some frames inside the span are empty
    # the overlapping windows return identical pixels for shared frames
    a, b = items["sav_000001_m000_0000"], items["sav_000001_m000_0003"]
    assert np.array_equal(a.frames[3:], b.frames[:9])


@pytest.mark.parametrize("masklets,codes", [("manual", {"m"}), ("auto", {"a"}), ("all", {"m", "a"})])
def test_masklet_selection(synth_split, masklets, codes):
    plan = plan_video(list_videos(str(synth_split))[1], ReaderConfig(masklets=masklets, segment_len=5))
    assert {s.key.split("_")[2][0] for s in plan.segments} == codes
    assert all(s.length <= 5 for s in plan.segments)
    # frame order, so segments of different masklets that share frames come one after another
    assert [(s.start, s.key) for s in plan.segments] == sorted((s.start, s.key) for s in plan.segments)


def _val_split(synth_split, root):
    """A val/test-layout split made from the first generated video: JPEG frames + PNG masks."""
    from pipeline import sav

    ref = list_videos(str(synth_split))[0]
    ann = sav.load_annotation(ref.manual_url, "manual", ref.video_id)
    split = root / "sav_val"
    frames, _ = zip(*synth.render(synth.load_specs(synth_split)[ref.video_id]))
    fdir = split / "JPEGImages_24fps" / ref.video_id
    fdir.mkdir(parents=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(fdir / f"{t:05d}.jpg", quality=95)
    for j, mid in enumerate(ann.masklet_ids):
        mdir = split / "Annotations_6fps" / ref.video_id / f"{mid:03d}"
        mdir.mkdir(parents=True)
        for i in range(ann.num_frames):
            Image.fromarray(sav.decode_rle(ann.rles[i][j]).astype(np.uint8) * 255).save(mdir / f"{4 * i:05d}.png")
    (split / "sav_val.txt").write_text(f"{ref.video_id}\n")
    return split, ref


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_layout_matches_train_layout(synth_split, tmp_path, backend):
    split, train_ref = _val_split(synth_split, tmp_path)
    cfg = ReaderConfig(masklets="manual", backend=backend)
    refs = list_videos(str(split))
    assert [r.video_id for r in refs] == [train_ref.video_id] and refs[0].layout == "frames"
    plan = plan_video(refs[0], cfg)
    train_plan = plan_video(train_ref, cfg)
    assert [s.key for s in plan.segments] == [s.key for s in train_plan.segments]
    for a, b in zip(read_segments(plan, cfg), read_segments(train_plan, cfg)):
        assert np.array_equal(a.masks, b.masks)
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 4
