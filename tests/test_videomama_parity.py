"""Release parity of the VideoMaMa matter, pinned on tiny random checkpoints (real diffusers classes).

Each test states a fact of the official inference (cvlab-kaist/VideoMaMa: ``pipeline_svd_mask.py``,
``inference_onestep_folder.py``, ``demo/videomama_wrapper.py``) and checks our matter against it by
observing the real modules (forward hooks on the VAE encoder/decoder), not a mock:

* decode: chunks of 8 frames with num_frames = the chunk (8 then 4 for a 12-frame segment);
* geometry: the CLI stretches every clip to 1024x576; it resizes with PIL bilinear on uint8;
* the CLI re-thresholds the resized mask at 127 (``> 127``); the demo keeps it soft;
* precision: UNet and VAE both fp16 (force_upcast ignored);
* alpha mapped in the VAE's dtype and converted to 8 bits by truncation;
* published folders: ``unet/``/``vae/`` with plain and/or ``fp16``-variant safetensors files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.arch import build_unet, tiny_unet_config
from models.base import MatterConfig, build_matter, output_fields
from models.presets import MATTER_PRESETS, preset_config
from models.tiny import make_tiny
from models.checkpoint import CheckpointError, select_weights, weights_sha256
from models.videomama import VideoMaMaMatter, model_size

PLAIN = "diffusion_pytorch_model.safetensors"
FP16 = "diffusion_pytorch_model.fp16.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny_both(tmp_path_factory) -> tuple[Path, Path]:
    """Both folders with the plain (fp32) and the fp16-variant file side by side (the SVD base's layout)."""
    return make_tiny(tmp_path_factory.mktemp("both"), seed=0, variant="both")


@pytest.fixture(scope="module")
def tiny_fp16_only(tmp_path_factory) -> tuple[Path, Path]:
    """Only the fp16-variant files (the layout that failed with 'no file named diffusion_pytorch_model.bin')."""
    return make_tiny(tmp_path_factory.mktemp("fp16"), seed=0, variant="fp16")


def cfg_for(ckpt: Path, base: Path, **kw) -> MatterConfig:
    opts = dict(checkpoint=str(ckpt), base_model=str(base), device="cpu", long_side=64, segment_len=12)
    opts.update(kw)
    return MatterConfig(**opts)


def clip(seed: int, t: int = 12, h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((t, h, w), bool)
    masks[:, h // 5: h // 5 + h // 2, w // 4: w // 4 + w // 2 + 1] = True
    return frames, masks


class Spy:
    """Forward pre-hooks (with kwargs) on a module: records what each real call received."""

    def __init__(self, module: torch.nn.Module, record):
        self.calls: list = []
        self._h = module.register_forward_pre_hook(lambda mod, args, kwargs: self.calls.append(record(args, kwargs)),
                                                   with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._h.remove()


def decoder_spy(m: VideoMaMaMatter) -> Spy:
    """(latent frames, num_frames, dtype) of every real VAE decoder call."""
    return Spy(m.vae.decoder, lambda a, k: (a[0].shape[0], k["num_frames"], a[0].dtype))


def encoder_spy(m: VideoMaMaMatter) -> Spy:
    """The image batch every real VAE encoder call sees ([frames..., masks...] in [-1, 1])."""
    return Spy(m.vae.encoder, lambda a, k: a[0].detach().float().clone())


# ------------------------------------------------------------------------------------------ decode


def test_default_decode_chunk_is_the_release_grouping_8_then_4(tiny):
    assert MatterConfig().decode_chunk == 8
    m = build_matter("videomama", cfg_for(*tiny))
    with decoder_spy(m) as spy:
        m.refine(*clip(1))
    assert [(n, nf) for n, nf, _ in spy.calls] == [(8, 8), (4, 4)]
    m2 = build_matter("videomama", cfg_for(*tiny, batch_size=2))
    with decoder_spy(m2) as spy:   # a batch of two segments: each chunk holds both segments' frames
        m2.refine_batch([clip(1), clip(2)])
    assert [(n, nf) for n, nf, _ in spy.calls] == [(16, 8), (8, 4)]


def test_decode_chunk_12_is_one_call_and_changes_the_mattes(tiny):
    frames, masks = clip(3)
    m8 = build_matter("videomama", cfg_for(*tiny))
    m12 = build_matter("videomama", cfg_for(*tiny, decode_chunk=12))
    with decoder_spy(m12) as spy:
        a12 = m12.refine(frames, masks)
    assert [(n, nf) for n, nf, _ in spy.calls] == [(12, 12)]
    a8 = m8.refine(frames, masks)
    # the temporal decoder mixes frames inside a chunk: the grouping is output-changing
    assert np.abs(a8 - a12).max() > 1e-3
    assert m8.fingerprint() != m12.fingerprint()


# ---------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("hw,long_side,expected", [
    ((480, 848), 1024, (576, 1024)),    # landscape SA-V
    ((848, 480), 1024, (576, 1024)),    # portrait too: stretched to the landscape frame
    ((1080, 1920), 1024, (576, 1024)),
    ((64, 64), 128, (64, 128)),         # 128 * 9/16 = 72 -> 64
])
def test_stretch_is_the_release_1024x576(hw, long_side, expected):
    assert model_size(*hw, long_side=long_side, resize="stretch") == expected


def test_stretch_runs_the_model_at_the_stretched_size(tiny):
    frames, masks = clip(4, t=3, h=96, w=64)   # portrait source
    keep = build_matter("videomama", cfg_for(*tiny, long_side=128, segment_len=4))
    stretch = build_matter("videomama", cfg_for(*tiny, long_side=128, segment_len=4, resize="stretch"))
    with encoder_spy(keep) as k, encoder_spy(stretch) as s:
        a_keep = keep.refine(frames, masks)
        a_stretch = stretch.refine(frames, masks)
    assert k.calls[0].shape[-2:] == (128, 64) and s.calls[0].shape[-2:] == (64, 128)
    assert a_keep.shape == a_stretch.shape == (3, 96, 64)   # mattes go back to the source size


# ------------------------------------------------------------------------------ resample, threshold


def _pil(images: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR)) for im in images])


def test_pil_resample_feeds_exactly_pil_bilinear_uint8_and_the_127_threshold(tiny):
    frames, masks = clip(5, t=2, h=90, w=150)
    m = build_matter("videomama", cfg_for(*tiny, long_side=128, segment_len=2, resize="stretch",
                                          resample="pil", mask_threshold=127))
    with encoder_spy(m) as spy:
        m.refine(frames, masks)
    x = spy.calls[0]
    h, w = 64, 128
    want_f = torch.from_numpy(_pil(frames, h, w)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    resized_mask = _pil(masks.astype(np.uint8) * 255, h, w)
    assert 0 < ((resized_mask > 0) & (resized_mask < 255)).sum(), "the resize makes soft edges to threshold"
    want_m = torch.from_numpy((resized_mask > 127).astype(np.float32))[:, None].expand(-1, 3, -1, -1) * 2 - 1
    assert torch.equal(x[:2], want_f) and torch.equal(x[2:], want_m)


@pytest.mark.parametrize("resample", ["torch", "pil"])
def test_mask_threshold_binarises_after_resize_and_default_stays_soft(tiny, resample):
    frames, masks = clip(6, t=2, h=90, w=150)
    kw = dict(long_side=128, segment_len=2, resample=resample)
    soft = build_matter("videomama", cfg_for(*tiny, **kw))
    hard = build_matter("videomama", cfg_for(*tiny, **kw, mask_threshold=127))
    assert soft.cfg.mask_threshold is None     # default: soft, as the release demo and training
    with encoder_spy(soft) as s, encoder_spy(hard) as t:
        soft.refine(frames, masks)
        hard.refine(frames, masks)
    m_soft, m_hard = s.calls[0][2:], t.calls[0][2:]
    assert ((m_soft > -1) & (m_soft < 1)).any()
    assert set(m_hard.unique().tolist()) == {-1.0, 1.0}
    # > 127 on the 0..255 scale of the resized soft mask
    np.testing.assert_array_equal(m_hard > 0, ((m_soft + 1) / 2 * 255).round() > 127)


def test_torch_and_pil_resample_differ_by_little(tiny):
    """The project's on-device float resize vs the release's PIL uint8 resize: small, not zero."""
    frames, masks = clip(7, t=2, h=90, w=150)
    kw = dict(long_side=128, segment_len=2)
    t_m, p_m = (build_matter("videomama", cfg_for(*tiny, **kw, resample=r)) for r in ("torch", "pil"))
    with encoder_spy(t_m) as ts, encoder_spy(p_m) as ps:
        t_m.refine(frames, masks)
        p_m.refine(frames, masks)
    diff = (ts.calls[0][:2] - ps.calls[0][:2]).abs() * 127.5    # frames, in 0..255 steps
    assert 0 < diff.max() <= 2.0, diff.max()


def test_pil_resample_returns_the_demo_way_8bit_then_pil_to_source(tiny):
    frames, masks = clip(8, t=2, h=50, w=70)
    m = build_matter("videomama", cfg_for(*tiny, long_side=128, segment_len=2, resample="pil",
                                          alpha_8bit="truncate"))
    a = m.refine(frames, masks)
    u = m.refine_batch_uint8([(frames, masks)])[0]
    assert a.shape == u.shape == (2, 50, 70)
    np.testing.assert_array_equal(np.rint(a * 255).astype(np.uint8), u)   # float = 8-bit / 255


# ------------------------------------------------------------------------------------- alpha 8-bit


def test_alpha_8bit_round_by_default_truncate_as_the_release(tiny):
    frames, masks = clip(9, t=3)
    kw = dict(segment_len=4)
    rnd = build_matter("videomama", cfg_for(*tiny, **kw))
    trunc = build_matter("videomama", cfg_for(*tiny, **kw, alpha_8bit="truncate"))
    assert rnd.cfg.alpha_8bit == "round"
    a = rnd.refine(frames, masks)
    np.testing.assert_array_equal(trunc.refine(frames, masks), a)        # the float matte is the same
    u_r = rnd.refine_batch_uint8([(frames, masks)])[0]
    u_t = trunc.refine_batch_uint8([(frames, masks)])[0]
    scaled = a * np.float32(255)
    np.testing.assert_array_equal(u_t, np.floor(scaled).astype(np.uint8))
    np.testing.assert_array_equal(u_r, np.rint(scaled).astype(np.uint8))
    assert (u_r != u_t).any()


# --------------------------------------------------------------------------------------- precision


def test_alpha_precision_vae_maps_alpha_in_the_vae_dtype(tiny):
    """The release computes (x/2+0.5).clamp(0,1).mean(RGB) and x255 in its fp16 VAE's dtype."""
    frames, masks = clip(12, t=3)
    kw = dict(segment_len=4, dtype="fp16", vae_dtype="fp16")
    ours = build_matter("videomama", cfg_for(*tiny, **kw)).refine(frames, masks)
    rel = build_matter("videomama", cfg_for(*tiny, **kw, alpha_precision="vae")).refine(frames, masks)
    assert np.array_equal(rel.astype(np.float16).astype(np.float32), rel)       # fp16 values
    assert not np.array_equal(ours.astype(np.float16).astype(np.float32), ours)
    assert 0 < np.abs(ours - rel).max() < 2e-3
    fp32 = [build_matter("videomama", cfg_for(*tiny, segment_len=4, alpha_precision=p)).refine(frames, masks)
            for p in ("fp32", "vae")]
    np.testing.assert_array_equal(*fp32)      # with an fp32 VAE the option changes nothing



def test_precision_modes_select_unet_and_vae_dtypes(tiny):
    """fp16 keeps the VAE in fp32 when its config says force_upcast (ours); vae_dtype fp16 = the release."""
    ours = build_matter("videomama", cfg_for(*tiny, dtype="fp16"))
    assert ours.unet.dtype == torch.float16 and ours.vae.dtype == torch.float32
    assert ours.resolved_options()["vae_dtype"] == "float32"
    release = build_matter("videomama", cfg_for(*tiny, dtype="fp16", vae_dtype="fp16"))
    assert release.unet.dtype == torch.float16 and release.vae.dtype == torch.float16
    opts = release.resolved_options()
    assert opts["dtype"] == "float16" and opts["vae_dtype"] == "float16"
    assert ours.fingerprint() != release.fingerprint()
    default = build_matter("videomama", cfg_for(*tiny))           # CPU auto: fp32 both
    assert default.resolved_options()["dtype"] == default.resolved_options()["vae_dtype"] == "float32"


def test_release_preset_runs_fp16_end_to_end_on_cpu(tiny_both):
    """fp16 convolutions run on this torch's CPU: the whole release path runs here (slowly)."""
    m = build_matter("videomama", preset_config("release", checkpoint=str(tiny_both[0]),
                                                base_model=str(tiny_both[1]), device="cpu", long_side=64,
                                                segment_len=12))
    assert m.unet.dtype == m.vae.dtype == torch.float16
    assert m.weights[0].variant == m.weights[1].variant == "fp16"
    frames, masks = clip(10, t=12, h=36, w=64)
    with decoder_spy(m) as spy:
        u = m.refine_batch_uint8([(frames, masks)])[0]
    assert [c[:2] for c in spy.calls] == [(8, 8), (4, 4)] and spy.calls[0][2] == torch.float16
    assert u.shape == (12, 36, 64) and u.dtype == np.uint8 and u.std() > 0
    assert m.release_differences() == {"long_side": [64, 1024]}


# ---------------------------------------------------------------------------------------- presets


def test_release_preset_sets_output_options_and_explicit_values_win():
    assert set(MATTER_PRESETS["release"]) <= set(output_fields())   # all fingerprinted
    c = preset_config("release")
    assert (c.resize, c.resample, c.mask_threshold, c.dtype, c.vae_dtype, c.decode_chunk, c.alpha_8bit,
            c.alpha_precision) == ("stretch", "pil", 127, "fp16", "fp16", 8, "truncate", "vae")
    assert preset_config("release", dtype="bf16", mask_threshold=None).dtype == "bf16"
    assert preset_config("default") == MatterConfig()


def test_cli_preset_release_and_explicit_flags(tmp_path):
    from pipeline.run import build_parser, config_from_args

    def matter(*flags):
        return config_from_args(build_parser().parse_args(["--split", "s", *flags])).matter_config

    assert matter() == MatterConfig()
    assert matter().decode_chunk == 8
    assert matter("--preset", "release") == preset_config("release")
    c = matter("--preset", "release", "--dtype", "bf16", "--mask-threshold", "none", "--decode-chunk", "12")
    assert (c.dtype, c.mask_threshold, c.decode_chunk, c.resize) == ("bf16", None, 12, "stretch")
    c = matter("--resize", "stretch", "--resample", "pil", "--mask-threshold", "127", "--alpha-8bit", "truncate",
               "--vae-dtype", "fp16")
    assert c == MatterConfig(resize="stretch", resample="pil", mask_threshold=127,
                                                  alpha_8bit="truncate", vae_dtype="fp16")
    with pytest.raises(SystemExit):
        matter("--mask-threshold", "255")
    help_text = " ".join(build_parser().format_help().split())
    for text in ("--preset", "release", "stretch", "--mask-threshold", "--vae-dtype", "--alpha-8bit", "--alpha-precision",
                 "(default: 8; release: 8)", "(default: keep-aspect; release: stretch)"):
        assert text in help_text, text


def test_unknown_option_values_are_refused_before_loading(tiny):
    for bad in (dict(resize="crop"), dict(resample="cv2"), dict(alpha_8bit="ceil"), dict(mask_threshold=255),
                dict(vae_dtype="fp8"), dict(alpha_precision="fp64")):
        with pytest.raises(ValueError):
            build_matter("videomama", cfg_for(*tiny, **bad))


# ---------------------------------------------------------------------------------- loading layouts


def _same_params(model: torch.nn.Module, path: Path) -> bool:
    state = load_file(str(path))
    own = model.state_dict()
    return all(torch.equal(own[k].float(), v.float()) for k, v in state.items())


def test_both_variants_present_the_dtype_picks_the_file(tiny_both):
    ckpt, base = tiny_both
    fp32 = build_matter("videomama", cfg_for(ckpt, base))
    assert fp32.weights[0].variant == fp32.weights[1].variant == "plain"
    assert _same_params(fp32.unet, ckpt / "unet" / PLAIN) and not _same_params(fp32.unet, ckpt / "unet" / FP16)
    fp16 = build_matter("videomama", cfg_for(ckpt, base, dtype="fp16", vae_dtype="fp16"))
    assert fp16.weights[0].variant == fp16.weights[1].variant == "fp16"
    assert _same_params(fp16.vae, base / "vae" / FP16)
    # fp16 UNet with the VAE upcast to fp32: each folder picks by its own dtype
    mixed = build_matter("videomama", cfg_for(ckpt, base, dtype="fp16"))
    assert (mixed.weights[0].variant, mixed.weights[1].variant) == ("fp16", "plain")
    assert len({fp32.weights_hash(), fp16.weights_hash(), mixed.weights_hash()}) == 3
    assert fp32.describe()["weights"]["vae"]["files"] == [PLAIN]


def test_only_fp16_variant_folders_load_in_fp32(tiny_fp16_only, tiny_both):
    ckpt, base = tiny_fp16_only
    assert sorted(p.name for p in (base / "vae").iterdir()) == ["config.json", FP16]
    m = build_matter("videomama", cfg_for(ckpt, base))
    assert m.unet.dtype == m.vae.dtype == torch.float32
    assert m.weights[0].variant == m.weights[1].variant == "fp16"
    assert _same_params(m.vae, base / "vae" / FP16)
    frames, masks = clip(11, t=2)
    assert m.refine_batch([(frames, masks)], keys=["k"])[0].std() > 0
    # the hash names what was loaded: the same fp16 files chosen from the 'both' layout hash the same
    both16 = build_matter("videomama", cfg_for(*tiny_both, dtype="fp16", vae_dtype="fp16"))
    assert both16.weights_hash() == m.weights_hash()
    assert build_matter("videomama", cfg_for(*tiny_both)).weights_hash() != m.weights_hash()


def test_plain_only_falls_back_for_fp16(tiny):
    m = build_matter("videomama", cfg_for(*tiny, dtype="fp16", vae_dtype="fp16"))
    assert m.weights[0].variant == m.weights[1].variant == "plain" and m.unet.dtype == torch.float16


def test_weights_sha256_hashes_exactly_the_loaded_files(tiny, tiny_both, tmp_path):
    plain = build_matter("videomama", cfg_for(*tiny))
    both = build_matter("videomama", cfg_for(*tiny_both))
    # the unused fp16 files beside the plain ones do not count: same plain bytes, same hash
    assert plain.weights_hash() == both.weights_hash()
    # change the unused file: hash unchanged; change the loaded one: hash changes
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_both[0], ckpt)
    unet = ckpt / "unet"
    before = weights_sha256([select_weights(unet, torch.float32, "u")])
    (unet / FP16).write_bytes((unet / FP16).read_bytes() + b" ")
    assert weights_sha256([select_weights(unet, torch.float32, "u")]) == before
    (unet / PLAIN).write_bytes((unet / PLAIN).read_bytes() + b" ")
    assert weights_sha256([select_weights(unet, torch.float32, "u")]) != before


def test_sharded_variant_folder_loads_and_hashes_its_shards(tmp_path, tiny):
    folder = tmp_path / "ckpt" / "unet"
    unet = build_unet(tiny_unet_config(), seed=0)
    unet.half().save_pretrained(folder, variant="fp16", max_shard_size="1MB")
    chosen = select_weights(folder, torch.float32, "VideoMaMa UNet")
    assert chosen.variant == "fp16" and chosen.files[0].name.endswith(".json") and len(chosen.files) > 2
    m = build_matter("videomama", cfg_for(tmp_path / "ckpt", tiny[1]))
    assert m.weights[0].files == chosen.files and m.unet.dtype == torch.float32


def test_missing_weights_error_lists_found_files_and_what_is_expected(tmp_path, tiny):
    unet = tmp_path / "ckpt" / "unet"
    shutil.copytree(tiny[0] / "unet", unet)
    (unet / PLAIN).rename(unet / "model.ckpt")
    with pytest.raises(CheckpointError) as e:
        build_matter("videomama", cfg_for(tmp_path / "ckpt", tiny[1]))
    msg = str(e.value)
    assert str(unet) in msg and "model.ckpt" in msg and "config.json" in msg
    assert PLAIN in msg and FP16 in msg
    (unet / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        build_matter("videomama", cfg_for(tmp_path / "ckpt", tiny[1]))


def test_git_lfs_pointer_is_named(tmp_path, tiny):
    vae = tmp_path / "base" / "vae"
    vae.mkdir(parents=True)
    shutil.copy(tiny[1] / "vae" / "config.json", vae)
    (vae / FP16).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 195\n")
    with pytest.raises(CheckpointError, match="git lfs pull"):
        build_matter("videomama", cfg_for(*tiny[:1], tmp_path / "base"))


def test_fingerprint_covers_every_parity_option(tiny):
    opts = build_matter("videomama", cfg_for(*tiny)).resolved_options()
    for name in ("decode_chunk", "resize", "resample", "mask_threshold", "dtype", "vae_dtype", "alpha_8bit",
                 "alpha_precision"):
        assert name in opts, name
    assert json.dumps(opts)   # JSON-able for run.json / done markers
