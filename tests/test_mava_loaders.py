"""MA-V loaders: streaming (webdataset) and random access (manifest byte ranges)."""

from collections import Counter
from pathlib import Path
import shutil

import fsspec
import numpy as np
import pytest
import torch

from mava import manifest as mf
from mava.loaders import ClipConfig, RandomAccessClips, StreamingClips, sam2_collate
from mava.sample import MissingFramesError
from tests.mava_shards import build_split

AUG = ClipConfig(clip_len=3, size=(16, 20), crop_scale=(0.4, 1.0), hflip=0.5, seed=7)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    # crafted content: frame red channel == alpha, so alignment is checkable pixel by pixel
    return build_split(tmp_path_factory.mktemp("mava_loaders"), shards=4, per_shard=3, t_len=5, h=40, w=48)


@pytest.fixture(scope="module")
def alpha_only(tmp_path_factory) -> Path:
    return build_split(tmp_path_factory.mktemp("mava_noframes"), shards=1, per_shard=2, with_frames=False)


def _ok_keys(d) -> set[str]:
    return {r["key"] for r in mf.ok_rows(str(d))}


def test_streaming_each_sample_once_per_epoch_with_two_workers(crafted):
    ds = StreamingClips(str(crafted), AUG, shuffle_buffer=3)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen = Counter(c["key"] for c in dl)
        assert set(seen) == _ok_keys(crafted) and set(seen.values()) == {1}


def test_streaming_split_by_node_is_a_partition(crafted, monkeypatch):
    got = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        got.append([c["key"] for c in StreamingClips(str(crafted), ClipConfig(fields=("alpha",)))])
    assert got[0] and got[1] and not set(got[0]) & set(got[1])
    assert set(got[0]) | set(got[1]) == _ok_keys(crafted)


def test_random_access_equals_streamed_for_same_key(crafted):
    streamed = {c["key"]: c for c in StreamingClips("file://" + str(crafted), AUG, shuffle_buffer=4)}
    ra = RandomAccessClips(str(crafted), AUG)
    assert len(ra) == len(streamed) == 12
    for key, s in streamed.items():
        r = ra.by_key(key)
        for f in ("frames", "alpha", "mask", "indices"):
            assert torch.equal(r[f], s[f]), (key, f)
    # every ranged read is one sample's bytes, nothing more
    rows = {r["key"]: r for r in mf.ok_rows(str(crafted))}
    assert ra.bytes_read == sum(r["tar_size"] for r in rows.values())
    # another epoch gives other random choices
    ra.set_epoch(1)
    assert any(not torch.equal(ra.by_key(k)["alpha"], streamed[k]["alpha"]) for k in streamed)


def test_transforms_keep_frame_alpha_alignment(crafted):
    ra = RandomAccessClips(str(crafted), ClipConfig(clip_len=4, size=(24, 24), crop_scale=(0.3, 1.0), hflip=0.5))
    flips = 0
    for i in range(len(ra)):
        c = ra[i]
        assert c["frames"].shape == (4, 3, 24, 24) and c["frames"].dtype == torch.uint8
        assert c["alpha"].shape == c["mask"].shape == (4, 1, 24, 24) and c["alpha"].dtype == torch.float32
        red = c["frames"][:, :1].float() / 255
        assert (red - c["alpha"]).abs().max() < 0.05, c["key"]
        assert 0 <= c["alpha"].min() and c["alpha"].max() <= 1
        # the green channel ramps left-to-right unless flipped
        g = c["frames"][0, 1].float()
        flips += int(g[:, 0].mean() > g[:, -1].mean())
    assert 0 < flips < len(ra)  # both flipped and unflipped clips happened
    # a deliberate 1-px shift of alpha is caught by the same check
    c = ra[0]
    assert (c["frames"][:, :1].float() / 255 - c["alpha"].roll(1, dims=-1)).abs().max() > 0.05


def test_mask_matches_rles_without_transform(crafted):
    ra = RandomAccessClips(str(crafted), ClipConfig())
    c = ra[0]
    a = c["alpha"][:, 0] > 0.5
    assert torch.equal(c["mask"][:, 0].bool(), a.roll(1, dims=-1))


def test_memory_filesystem(crafted):
    fs = fsspec.filesystem("memory")
    for p in Path(crafted).rglob("*"):
        if p.is_file():
            fs.pipe(f"/mava_test/synth/{p.relative_to(crafted)}", p.read_bytes())
    url = "memory://mava_test/synth"
    ram = RandomAccessClips(url, AUG)
    local = RandomAccessClips(str(crafted), AUG)
    assert len(ram) == len(local)
    for i in range(len(ram)):
        assert torch.equal(ram[i]["frames"], local[i]["frames"])
    streamed = {c["key"] for c in StreamingClips(url, ClipConfig(fields=("alpha",)))}
    assert streamed == _ok_keys(crafted)


def test_query_filter(crafted):
    sql = "select key from manifest where masklet_id = 1 and status = 'ok'"
    want = set(mf.query_keys(str(crafted), sql))
    assert len(want) == 4
    assert {c["key"] for c in StreamingClips(str(crafted), ClipConfig(fields=("alpha",)), query=sql)} == want
    assert {r["key"] for r in RandomAccessClips(str(crafted), query=sql).rows} == want


def test_frames_none_needs_alpha_only(alpha_only):
    ra = RandomAccessClips(str(alpha_only), ClipConfig())
    with pytest.raises(MissingFramesError, match="no frame JPEGs"):
        ra[0]
    with pytest.raises(MissingFramesError):
        next(iter(StreamingClips(str(alpha_only), ClipConfig())))
    c = RandomAccessClips(str(alpha_only), ClipConfig(fields=("alpha", "mask")))[0]
    assert "frames" not in c and c["alpha"].shape[0] == 5


def test_sam2_collate(crafted):
    ra = RandomAccessClips(str(crafted), AUG)
    b = sam2_collate([ra[i] for i in range(3)])
    assert b.images.shape == (3, 3, 3, 16, 20) and b.images.dtype == torch.float32
    assert b.alpha.shape == (3, 3, 16, 20) and b.masks.shape == (3, 3, 16, 20) and b.masks.dtype == torch.bool
    assert b.obj_to_frame_idx.shape == (3, 3, 2) and b.obj_to_frame_idx[2, 1].tolist() == [2, 1]
    assert b.object_ids.tolist() == [ra.rows[i]["key"] and ra[i]["masklet_id"] for i in range(3)]
    assert torch.equal(b.alpha[:, 1], ra[1]["alpha"][:, 0])
    dl = torch.utils.data.DataLoader(ra, batch_size=4, num_workers=2, collate_fn=sam2_collate, shuffle=True)
    assert sorted(k for batch in dl for k in batch.keys) == sorted(_ok_keys(crafted))
    with pytest.raises(ValueError, match="ClipConfig.clip_len"):
        sam2_collate([RandomAccessClips(str(crafted), ClipConfig(clip_len=2))[0], ra[1]])
