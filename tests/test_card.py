"""`python -m mava card`: the Hub dataset card of a real job output (conftest `job_output`, on a copy)."""

import glob
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mava import card, schema
from mava.folder import as_split
from mava.__main__ import main


@pytest.fixture(scope="module")
def carded(job_output, tmp_path_factory) -> tuple[Path, dict, str]:
    """A copy of the job output with its card at <split>/README.md: (split dir, YAML header, body)."""
    d = tmp_path_factory.mktemp("card") / job_output[0].name
    shutil.copytree(job_output[0], d)
    assert main(["card", str(d), "--out", str(d / "README.md")]) == 0
    head, body = card.parse((d / "README.md").read_text())
    return d, head, body


def _table(body: str) -> dict[str, str]:
    return dict(re.findall(r"^\| ([^|`]+?) \| ([^|]+?) \|$", body, re.M))


def test_yaml_header(carded):
    d, head, _ = carded
    rows = as_split(str(d)).read_manifest().to_pylist()
    ok = [r for r in rows if r["status"] == schema.STATUS_OK]
    assert head["license"] == "cc-by-4.0"
    assert "image-segmentation" in head["task_categories"]
    assert head["size_categories"] == ["n<1K"]
    files = head["configs"][0]["data_files"]
    assert files == [{"split": "train", "path": "shards/*.tar"}]
    assert sorted(p.name for p in d.glob(files[0]["path"])) == sorted({f"{r['shard']}.tar" for r in rows})
    info = head["dataset_info"]
    assert info["splits"] == [{"name": "train", "num_bytes": sum(r["tar_size"] for r in ok), "num_examples": len(ok)}]
    names = [f["name"] for f in info["features"]]
    assert names[:3] == ["__key__", "__url__", "json"]
    assert schema.alpha_ext(max(r["num_frames"] for r in ok) - 1) in names


def test_numbers_match_the_manifest(carded):
    d, _, body = carded
    rows = as_split(str(d)).read_manifest().to_pylist()
    ok = [r for r in rows if r["status"] == schema.STATUS_OK]
    t = _table(body)
    assert int(t["samples planned"]) == len(rows)
    assert int(t["samples ok"]) == len(ok)
    assert int(t["samples failed"]) == len(rows) - len(ok)
    for err, n in Counter(r["error_type"] for r in rows if r["status"] != "ok").items():
        assert int(t[f"failed: {err}"]) == n
    assert int(t["alpha frames (ok samples)"]) == sum(r["num_frames"] for r in ok)
    assert int(t["shards"]) == len({r["shard"] for r in rows})
    assert int(t["videos"]) == len({r["video_id"] for r in rows})
    assert int(t["bytes in shards"]) == sum(p.stat().st_size for p in (d / "shards").glob("*.tar"))
    iou = np.array([r["mask_iou"] for r in ok])
    assert re.search(rf"\| `mask_iou` \| {iou.mean():.3f} \| {np.median(iou):.3f} \| {iou.min():.3f} \| "
                     rf"{iou.max():.3f} \|", body)


def test_provenance_and_license(carded):
    d, _, body = carded
    run = json.loads((d / schema.RUN_JSON).read_text())
    assert "CC BY 4.0" in body and "not legal advice" in body
    assert f"matter: `{run['matter']['name']}`" in body
    assert f"code version: `{run['code_version']}`" in body
    assert "checkpoint sha256: none" in body  # the guided matter has no weights
    assert "| `radius_scale` | 0.5 |" in body  # the matter's own settings (describe())
    # every output-changing option of the run's fingerprint, flattened
    fp = run[schema.RUN_FINGERPRINT]
    assert isinstance(fp, dict) and "Output-changing options (fingerprint)" in body
    for k, v in card._flatten(fp):
        assert f"| `{k}` | {v if isinstance(v, str) else json.dumps(v)} |" in body, k


def test_run_json_without_fingerprint(carded, tmp_path):
    """Outputs written before fingerprints: the markers' content options and the matter config are listed."""
    d, _, _ = carded
    e = tmp_path / d.name
    shutil.copytree(d, e)
    run = json.loads((e / schema.RUN_JSON).read_text())
    run.pop(schema.RUN_FINGERPRINT)
    (e / schema.RUN_JSON).write_text(json.dumps(run))
    legacy = {"frames": "jpg", "masklets": "manual", "matter": "guided", "seed": 0, "segment_len": 12}
    for p in (e / "done").glob("*.json"):
        m = json.loads(p.read_text())
        m.pop(schema.MARKER_FINGERPRINT, None)
        m[schema.MARKER_OPTIONS_LEGACY] = legacy
        p.write_text(json.dumps(m))
    assert main(["card", str(e), "--out", str(e / "README.md"), "--previews", "0"]) == 0
    _, body = card.parse((e / "README.md").read_text())
    assert "records no fingerprint" in body and "Output-changing options (fingerprint)" not in body
    for k, v in legacy.items():
        assert f"| `{k}` | {v} |" in body
    assert "| `long_side` | 1024 |" in body  # the matter config as run


def test_mixed_shards_are_flagged(carded, tmp_path):
    d, _, _ = carded
    e = tmp_path / d.name
    shutil.copytree(d, e)
    p = next((e / "done").glob("*.json"))
    m = json.loads(p.read_text())
    m[schema.MARKER_FINGERPRINT]["content"]["seed"] = 7
    p.write_text(json.dumps(m))
    _, body = card.parse(card.build(str(e)).text())
    assert "> **Warning.**" in body and "different options or fingerprints" in body
    assert "The done markers record different fingerprints" in body and "| `content.seed` | 7 |" in body


def test_figures(carded):
    d, _, body = carded
    assert "![quality histograms](figures/stats.png)" in body and "![previews](figures/previews.png)" in body
    stats_png = np.asarray(Image.open(d / "figures" / card.STATS_PNG).convert("RGB"))
    assert stats_png.shape[1] > 800 and len(np.unique(stats_png.reshape(-1, 3), axis=0)) > 20
    prev = np.asarray(Image.open(d / "figures" / card.PREVIEWS_PNG).convert("RGB"))
    assert prev.shape[0] > 4 * 100  # 4 samples, one row each
    assert ((prev == (255, 214, 0)).all(-1)).sum() > 50  # the input-mask outline is drawn


def test_card_loads_with_datasets(carded, tmp_path):
    datasets = pytest.importorskip("datasets")
    d, head, _ = carded
    n = head["dataset_info"]["splits"][0]["num_examples"]
    # datasets reads the card's configs and features, and checks num_examples against the shards
    ds = datasets.load_dataset(str(d), split="train", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == n and ds[0]["json"]["key"] == ds[0]["__key__"]
    it = datasets.load_dataset(str(d), split="train", streaming=True, cache_dir=str(tmp_path / "c"))
    assert sum(1 for _ in it) == n


def test_card_elsewhere_points_at_the_shards(carded, tmp_path):
    d, _, _ = carded
    out = tmp_path / "repo" / "README.md"
    out.parent.mkdir()
    c = card.write(str(d), str(out), n_previews=1)
    path = c.header["configs"][0]["data_files"][0]["path"]
    assert not path.startswith("/") and path.endswith(schema.SHARDS_GLOB)
    assert len(glob.glob(os.path.join(out.parent, path))) == len(list((d / "shards").glob("*.tar")))
    assert (out.parent / "figures" / card.STATS_PNG).exists()


def test_size_category_and_split_names():
    assert card.size_category(999) == "n<1K" and card.size_category(1000) == "1K<n<10K"
    assert card.size_category(2_500_000) == "1M<n<10M"
    assert card.hub_split_name("sav_train") == "train" and card.hub_split_name("sav_val") == "validation"
    assert card.hub_split_name("sav_test") == "test" and card.hub_split_name("my-split") == "my_split"


def test_histogram_range_fits_small_area_columns():
    from mava.stats import plot_range

    assert plot_range("mean_alpha", np.array([0.03, 0.061])) == 0.1  # not squeezed into one bin of [0, 1]
    assert plot_range("semi_fraction", np.array([0.3])) == 0.5
    assert plot_range("mask_iou", np.array([0.7, 0.99])) == 1.0 and plot_range("mean_alpha", np.array([])) == 1.0
