"""Reader on generated splits: round trip against the generator, masklet selection, val layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import synth
from pipeline.protocol import Failure
from pipeline.reader import ReaderConfig, list_videos, plan_video, read_segments

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


# --- rotated mp4s ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rotated_splits(tmp_path_factory):
    """The same two SA-V-style portrait videos (96x160 display, portrait JSON) written plain and with
    display rotation 90 and 270 (landscape coded pictures), one split each, by rotation."""
    out = {}
    for r in (0, 90, 270):
        specs = [synth.VideoSpec(f"sav_{i:06d}", 96, 160, 40, seed=20 + i, rotate=r) for i in (1, 2)]
        out[r] = synth.generate_split(tmp_path_factory.mktemp(f"rot{r}"), specs, "sav_train", gt=False)
    return out


@pytest.mark.parametrize("r", [90, 270])
def test_rotated_sav_video_plans_and_reads_display_frames(rotated_splits, r):
    split, plain = rotated_splits[r], rotated_splits[0]
    for a, b in zip(sorted(split.rglob("sav_*.json")), sorted(plain.rglob("sav_*.json")), strict=True):
        assert a.read_bytes() == b.read_bytes()              # same annotations, only the mp4s differ
    items = {}
    for backend in BACKENDS:
        cfg = ReaderConfig(masklets="all", backend=backend)
        for ref, plain_ref in zip(list_videos(str(split)), list_videos(str(plain))):
            plan, plain_plan = plan_video(ref, cfg), plan_video(plain_ref, cfg)
            assert plan.failures == [] and plan.segments
            assert (plan.rotation, plan.display_rotation) == (r, r)
            assert (plan.height, plan.width) == (160, 96) == (plain_plan.height, plain_plan.width)
            assert plan.segments == plain_plan.segments
            for item in read_segments(plan, cfg):
                assert not isinstance(item, Failure), item
                items.setdefault(item.segment.key, {})[backend] = item
    spec = {s.video_id: s for s in synth.load_specs(split).values()}
    for key, by_backend in items.items():
        d, p = by_backend["decord"], by_backend["pyav"]
        assert np.array_equal(d.frames, p.frames) and np.array_equal(d.masks, p.masks)
        s = d.segment
        frames, alphas = zip(*synth.render(spec[s.video_id]))
        ref = np.stack(frames)[s.video_frames]
        assert np.abs(d.frames.astype(np.int16) - ref.astype(np.int16)).mean() < 4, key
        assert np.array_equal(d.masks, synth.gt_mask(np.stack(alphas)[s.video_frames, s.masklet_id]))


def _add_display_matrix(src, dst, degrees_cw: int) -> None:
    """Remux ``src`` (no re-encoding) with a display matrix asking players to turn it clockwise."""
    import av

    with av.open(str(src)) as ci, av.open(str(dst), "w", format="mp4") as co:
        si = ci.streams.video[0]
        so = co.add_stream_from_template(si)
        so.set_display_rotation(-degrees_cw)
        for pkt in ci.demux(si):
            if pkt.dts is None:
                continue
            pkt.stream = so
            co.mux(pkt)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_mp4_with_coded_size_annotation_reads_coded_pictures(synth_split, tmp_path, backend):
    """An annotation made on the coded pictures (its size is the coded size): no rotation applied,
    the frames are those of the same video without the display matrix."""
    import shutil

    split = tmp_path / "sav_train"
    shutil.copytree(synth_split, split, ignore=shutil.ignore_patterns("gt_alpha"))
    mp4 = split / "sav_000" / "sav_000001.mp4"
    _add_display_matrix(synth_split / "sav_000" / "sav_000001.mp4", mp4, 90)
    cfg = ReaderConfig(masklets="manual", backend=backend)
    plan = plan_video(list_videos(str(split))[0], cfg)
    plain = plan_video(list_videos(str(synth_split))[0], cfg)
    assert (plan.rotation, plan.display_rotation) == (0, 90)
    assert (plan.height, plan.width) == (plain.height, plain.width) == (96, 160)
    assert plan.segments == plain.segments and plan.failures == []
    for a, b in zip(read_segments(plan, cfg), read_segments(plain, cfg)):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
