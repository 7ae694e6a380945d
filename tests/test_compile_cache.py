"""Compile that pays off: shape buckets, padded batches, compile counts, compiled-artefact reuse.

torch.compile runs on CPU here. The recompile-count test uses the ``eager`` backend (dynamo's tracing and
guards decide what recompiles, whatever the backend; inductor's C++ compile of even the tiny decoder
takes ~40-60 s on these 2 cores); the artefact-reuse test needs inductor's caches and compiles the
decoder of a one-level VAE once (marked slow).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.arch import build_unet, build_vae, tiny_unet_config, tiny_vae_config
from models.base import MatterConfig, build_matter
from models.compile_cache import (auto_buckets, bucket_size, env_key, format_buckets, pad_indices,
                                  parse_buckets)
from models.tiny import make_tiny
from models.videomama import VideoMaMaMatter


def test_parse_and_pick_buckets():
    assert parse_buckets("") == []
    assert parse_buckets("1024x576, 576x1024,1024x576") == [(576, 1024), (1024, 576)]
    assert format_buckets(parse_buckets("1024x576,576x1024")) == "1024x576,576x1024"
    assert auto_buckets(1024) == [(576, 1024), (1024, 576), (768, 1024), (1024, 768), (1024, 1024)]
    assert parse_buckets("auto", 512) == auto_buckets(512)
    for bad in ("1024x570", "1024", "axb", "0x64"):
        with pytest.raises(ValueError):
            parse_buckets(bad)
    b = auto_buckets(1024)
    assert bucket_size(720, 1280, b) == (576, 1024)       # 16:9 landscape
    assert bucket_size(848, 480, b) == (1024, 576)        # SA-V portrait
    assert bucket_size(480, 640, b) == (768, 1024)        # 4:3
    assert bucket_size(1000, 1010, b) == (1024, 1024)
    assert bucket_size(100, 1000, b) == (576, 1024)       # extreme: the nearest there is
    assert bucket_size(600, 800, [(576, 1024), (1024, 576)]) == (576, 1024)


def test_pad_indices():
    assert pad_indices([4, 7], 4) == [4, 7, 4, 7]
    assert pad_indices([4, 7, 9], 2) == [4, 7, 9]
    assert pad_indices([], 3) == []


def clip(h: int, w: int, seed: int, t: int = 2):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((t, h, w), bool)
    masks[:, h // 4: 3 * h // 4, w // 5: 3 * w // 5] = True
    return frames, masks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


def cfg(tiny, **kw) -> MatterConfig:
    base = dict(checkpoint=str(tiny[0]), base_model=str(tiny[1]), device="cpu", long_side=128, segment_len=2,
                decode_chunk=2)
    base.update(kw)
    return MatterConfig(**base)


def test_buckets_are_an_output_option_and_padding_is_not(tiny):
    plain = build_matter("videomama", cfg(tiny, batch_size=2))
    auto = build_matter("videomama", cfg(tiny, shape_buckets="auto"))
    assert auto.resolved_options()["shape_buckets"] == "128x64,64x128,128x128"   # 4:3 snaps to 1:1 at 128
    bucketed = build_matter("videomama", cfg(tiny, batch_size=2, shape_buckets="128x64,64x128"))
    assert bucketed.fingerprint() != plain.fingerprint() != auto.fingerprint()
    padded = build_matter("videomama", cfg(tiny, batch_size=2, shape_buckets="128x64,64x128", pad_batch=True))
    assert padded.fingerprint() == bucketed.fingerprint()
    clips = [clip(60, 100, 1), clip(64, 110, 2), clip(100, 100, 3)]   # all -> 128x64 (square: tie, first)
    a, b = bucketed.refine_batch(clips), padded.refine_batch(clips)     # batches of 2 and 1 (padded to 2)
    for (f, _), x, y in zip(clips, a, b):
        assert x.shape == y.shape == f.shape[:3]
        np.testing.assert_allclose(x, y, atol=1e-5)
    # the square clip is stretched to 64x128 instead of running at 128x128
    assert np.abs(a[2] - plain.refine_batch(clips[2:])[0]).max() > 1e-3


def test_mixed_aspect_workload_compiles_once_per_bucket(tiny):
    """Three aspect ratios, batches of 2 with a smaller last batch per bucket: the decoder compiles once per
    bucket shape and never again; without padding the last batch is a new shape (one more compile)."""
    torch._dynamo.reset()
    clips = [clip(60, 100, 1), clip(100, 60, 2), clip(64, 64, 3), clip(62, 110, 4), clip(72, 128, 5),
             clip(110, 64, 6)]                                            # 3 landscape, 2 portrait, 1 square
    m = build_matter("videomama", cfg(tiny, batch_size=2, pad_batch=True, shape_buckets="128x64,64x128,128x128",
                                      compile=True, compile_backend="eager", compile_parts="decoder"))
    m.refine_batch(clips)
    dec = m.stats()["compile"]["parts"]["decoder"]
    assert dec["shapes"] == 3 and dec["compiles"] == 3 and dec["recompiles"] == 2, dec
    assert dec["calls"] == 4                                              # 4 batches x 1 decode chunk
    m.refine_batch([clips[5], clips[0]])                                  # seen shapes, other order
    again = m.stats()["compile"]
    assert again["parts"]["decoder"]["compiles"] == 3 and again["compiles"] == 3, again
    assert set(again["parts"]) == {"decoder"} and again["compile_s"] > 0

    torch._dynamo.reset()
    unpadded = build_matter("videomama", cfg(tiny, batch_size=2, shape_buckets="128x64", compile=True,
                                             compile_backend="eager", compile_parts="decoder"))
    unpadded.refine_batch(clips[:3])                                     # one bucket: batches of 2, then 1
    assert unpadded.stats()["compile"]["parts"]["decoder"]["compiles"] == 2
    torch._dynamo.reset()


def _small_modules():
    """UNet + a one-level VAE: the smallest decoder with every block kind (inductor compiles it once)."""
    vae_cfg = dict(tiny_vae_config(), down_block_types=["DownEncoderBlock2D"], block_out_channels=[32])
    return build_unet(tiny_unet_config(), seed=0), build_vae(vae_cfg, seed=1)


@pytest.mark.slow
def test_compiled_artefacts_are_reused_by_a_second_instance(tmp_path, monkeypatch):
    """A restarted actor (same cache folder) and another node (fresh local cache, blobs from a URL) compile
    from cache hits, not from scratch (counters, not time)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "process_default"))
    unet, vae = _small_modules()
    folder = tmp_path / "compile_cache"
    frames, masks = clip(64, 64, 7)

    def run(location: str):
        torch._dynamo.reset()   # as a new process: no dynamo cache; inductor's on-disk caches decide
        c = MatterConfig(device="cpu", long_side=64, segment_len=2, decode_chunk=2, shape_buckets="64x64",
                         compile=True, compile_parts="decoder", compile_cache=location)
        m = VideoMaMaMatter.from_modules(copy.deepcopy(unet), copy.deepcopy(vae), c)
        return m.refine(frames, masks), m.stats()["compile"]

    with inductor_config.patch({"cpp.vec_isa_ok": False, "compile_threads": 1}):  # smaller C++ builds
        first, s1 = run(str(folder))
        assert s1["compiles"] == 1 and s1["fxgraph_cache_miss"] == 1 and s1["fxgraph_cache_hit"] == 0, s1
        assert s1["cache"]["saves"] == 1 and s1["cache"]["inductor_dir"] == str((folder / "inductor").resolve())
        blobs = list((folder / "artifacts" / env_key(torch.device("cpu"))).glob("*.bin"))
        assert len(blobs) == 1 and blobs[0].stat().st_size > 0

        restarted, s2 = run(str(folder))                                  # same node: same folder
        assert s2["fxgraph_cache_hit"] == 1 and s2["fxgraph_cache_miss"] == 0, s2
        assert s2["cache"]["saves"] == 0                                  # nothing new to share

        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "other_node"))
        other, s3 = run(folder.as_uri())                                  # URL: blobs only
        assert s3["cache"]["blobs_loaded"] == 1 and s3["cache"]["entries_loaded"] > 0, s3
        assert s3["cache"]["inductor_dir"] is None
        assert s3["fxgraph_cache_hit"] == 1 and s3["fxgraph_cache_miss"] == 0, s3
    np.testing.assert_array_equal(first, restarted)
    np.testing.assert_array_equal(first, other)
    torch._dynamo.reset()


def test_without_buckets_each_shape_compiles_static(tiny):
    """No automatic dynamic shapes: a second decode chunk size (and a second model size) is one more static
    graph each (dynamo's symbolic retrace of the channels-last temporal decoder did not finish in 30 min)."""
    torch._dynamo.reset()
    m = build_matter("videomama", cfg(tiny, segment_len=3, decode_chunk=2, channels_last=True, compile=True,
                                      compile_backend="eager", compile_parts="decoder"))
    m.refine_batch([clip(60, 100, 1, t=3)])                              # decode chunks of 2 then 1 frame
    m.refine_batch([clip(100, 60, 2, t=3)])                              # another model size
    dec = m.stats()["compile"]["parts"]["decoder"]
    assert dec["compiles"] == dec["shapes"] == 4, dec
    torch._dynamo.reset()
