"""MA-V through Hugging Face `datasets` (its packaged `webdataset` builder) on the real job output.

The builder splits member names at the first dot: `<key>.alpha.03.png` -> column `alpha.03.png`
(an image), `<key>.json` -> column `json`. It infers columns from the first five samples and refuses
shards whose samples differ in members, which MA-V's do (short segments have fewer frames), so
`mava.hf` gives the features; no member name changes."""

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from mava import hf, schema
from mava import manifest as mf
from mava.folder import as_split
from mava.sample import decode_sample, member_map, parse_member_bytes, read_sample_bytes


def _expected(d) -> dict[str, tuple]:
    """key -> (alpha uint8[T,H,W], frames uint8[T,H,W,3] or None, meta), decoded by mava itself."""
    split = as_split(str(d))
    out = {}
    for r in mf.ok_rows(split):
        members = member_map(parse_member_bytes(read_sample_bytes(
            split, schema.shard_file(r["shard"]), r["tar_offset"], r["tar_size"])), r["key"])
        fields = ("frames", "alpha") if schema.frame_ext(0) in members else ("alpha",)
        s = decode_sample(r["key"], members, None, fields)
        out[r["key"]] = (s.alpha, s.frames, s.meta)
    return out


def _check_rows(rows, want: dict) -> None:
    got = {}
    for row in rows:
        a = hf.row_arrays(row)
        got[a["key"]] = a
        n = a["meta"]["num_frames"]
        # frame positions past the sample's length are absent (None), not made up
        for i in range(n, hf.DEFAULT_MAX_FRAMES):
            assert row.get(schema.alpha_ext(i)) is None
    assert set(got) == set(want)  # one row per ok sample, none for failed rows
    for key, (alpha, frames, meta) in want.items():
        assert np.array_equal(got[key]["alpha"], alpha), key
        assert got[key]["meta"] == meta
        if frames is None:
            assert got[key]["frames"] is None
        else:
            assert np.array_equal(got[key]["frames"], frames), key


def test_member_names_parse_to_columns(job_output):
    cols = dict(hf.columns(12))
    assert cols["alpha.03.png"] == "image" and cols["frame.03.jpg"] == "image" and cols["json"] == "json"
    # datasets' own split of a member name agrees with mava's
    from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

    from mava.sample import split_member

    for name in ("sav_000001_m003_0012.alpha.03.png", "sav_000001_m003_0012.frame.11.jpg",
                 "sav_000001_m003_0012.json"):
        assert base_plus_ext(name) == split_member(name)


def test_without_features_the_builder_refuses_mixed_lengths(job_output, tmp_path):
    # documents why mava.hf gives features: shard 0 mixes 12- and 7-frame samples
    files = hf.data_files(str(job_output[0]))
    with pytest.raises(ValueError, match="same prefix or the same types"):
        datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                              cache_dir=str(tmp_path / "cache"))


def test_load_dataset_random_access(job_output, tmp_path):
    d = job_output[0]
    ds = hf.load(str(d), cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == len(mf.ok_rows(str(d)))
    assert isinstance(ds.features[schema.alpha_ext(0)], datasets.Image)
    _check_rows(ds, _expected(d))


def test_load_dataset_streaming(job_output, tmp_path):
    d = job_output[0]
    ds = hf.load(str(d), streaming=True, cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds, datasets.IterableDataset)
    _check_rows(list(ds), _expected(d))


def test_load_dataset_alpha_only_output(job_output_alpha_only, tmp_path):
    d = job_output_alpha_only
    assert not hf.has_frames(str(d))
    ds = hf.load(str(d), cache_dir=str(tmp_path / "cache"))
    assert schema.frame_ext(0) not in ds.features
    _check_rows(ds, _expected(d))
