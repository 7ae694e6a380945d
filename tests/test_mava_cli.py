"""`python -m mava` commands on a real pipeline output: `pipeline.run --matter guided` on the generated
split (conftest `job_output`: 14 ok samples, an EmptyMasklet and a VideoMissing row). Tests that modify
the output work on a copy."""

import io
import json
import shutil
from collections import Counter
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mava import manifest as mf
from mava.folder import as_split
from mava import schema
from mava.__main__ import build_parser, main
from mava.eval import gt_path


@pytest.fixture(scope="module")
def split(job_output):
    return job_output


def _gt_frames(d: Path) -> dict[tuple[str, int], set[int]]:
    """Annotated frames covered by the ok samples, per clip (video, masklet)."""
    clips: dict[tuple[str, int], set[int]] = {}
    for r in mf.ok_rows(str(d)):
        clips.setdefault((r["video_id"], r["masklet_id"]), set()).update(r["ann_frames"])
    return clips


def _copy(split_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / split_dir.name
    shutil.copytree(split_dir, dst)
    return dst


def run(capsys, *argv) -> tuple[int, str]:
    rc = main([*map(str, argv)])
    return rc, capsys.readouterr().out


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "mava", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("stats", "query", "verify", "preview", "eval"):
        assert cmd in out
    p = build_parser()
    for action in p._subparsers._group_actions[0].choices.values():
        for a in action._actions:
            assert a.help, (action.prog, a.dest)


def test_stats(split, capsys, tmp_path):
    d, _ = split
    rows = as_split(str(d)).read_manifest().to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    rc, out = run(capsys, "stats", d, "--plot", tmp_path / "s.png")
    assert rc == 0
    assert f"{len(rows)} planned, {len(ok)} ok, {len(rows) - len(ok)} failed" in out
    errors = Counter(r["error_type"] for r in rows if r["status"] != "ok")
    assert errors == {"EmptyMasklet": 1, "VideoMissing": 1}
    for err, n in errors.items():
        assert f"failed {err}: {n}" in out
    assert f"matters: guided {len(ok)}" in out
    assert f"frames (ok samples): {sum(r['num_frames'] for r in ok)}" in out
    assert "mask_iou: mean" in out and "█" in out
    im = Image.open(tmp_path / "s.png")
    assert im.size[0] > 800 and len(np.unique(np.asarray(im.convert("L")))) > 10


def test_query(split, capsys):
    d, _ = split
    rc, out = run(capsys, "query", d, "select key from manifest where status = 'ok' and masklet_id = 1 order by key",
                  "--keys")
    keys = out.split()
    want = sorted(r["key"] for r in mf.ok_rows(str(d)) if r["masklet_id"] == 1)
    # 3 videos x 2 windows of 12 over 15 annotated frames (starts 0 and 3)
    assert rc == 0 and keys == want and len(keys) == 6 and all("_m001_" in k for k in keys)
    rc, out = run(capsys, "query", d, "select error_type, count(*) as n from manifest group by 1 order by 1")
    lines = out.strip().splitlines()
    assert lines[0] == "error_type\tn" and "EmptyMasklet\t1" in lines and "VideoMissing\t1" in lines
    # semi-transparent clips: the guided matte gives every clip some
    rc, out = run(capsys, "query", d, "select key from manifest where semi_fraction > 0.01", "--keys")
    assert rc == 0 and sorted(out.split()) == sorted(r["key"] for r in mf.ok_rows(str(d)))


def test_verify_passes_on_pipeline_output(split, capsys):
    rc, out = run(capsys, "verify", split[0], "--no-progress", "--full")
    assert rc == 0 and out.strip().endswith("OK"), out


def _rewrite_tar(path: Path, drop_key: str | None = None, corrupt: str | None = None) -> None:
    src = tarfile.open(path)
    members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    src.close()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if drop_key and m.name.startswith(drop_key + "."):
                continue
            if corrupt and m.name == corrupt:
                data = data[:8] + bytes(len(data) - 8)
            tar.addfile(m, io.BytesIO(data))


def test_verify_catches_deleted_sample(split, capsys, tmp_path):
    d = _copy(split[0], tmp_path)
    row = mf.ok_rows(str(d))[1]
    _rewrite_tar(d / "shards" / f"{row['shard']}.tar", drop_key=row["key"])
    rc, out = run(capsys, "verify", d, "--no-progress")
    assert rc == 1
    assert f"[missing-sample] {row['shard']}:{row['key']}" in out
    assert "[marker]" in out  # the done marker's tar hash no longer matches


def test_verify_catches_corrupted_png(split, capsys, tmp_path):
    d = _copy(split[0], tmp_path)
    row = mf.ok_rows(str(d))[2]
    name = f"{row['key']}.{schema.alpha_ext(1)}"
    _rewrite_tar(d / "shards" / f"{row['shard']}.tar", corrupt=name)  # same sizes: offsets stay valid
    rc, out = run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and f"[decode] {row['shard']}:{row['key']}: {schema.alpha_ext(1)} does not decode" in out
    assert "[byte-range]" not in out and "[missing-sample]" not in out


def test_verify_catches_missing_marker_and_orphan(split, capsys, tmp_path):
    d = _copy(split[0], tmp_path)
    markers = sorted((d / "done").glob("*.json"))
    markers[0].unlink()
    rc, out = run(capsys, "verify", d, "--no-progress")
    assert rc == 1 and "manifest without done marker" in out


def test_preview_png_and_video(split, tmp_path, capsys):
    d, _ = split
    row = next(r for r in mf.ok_rows(str(d)) if r["num_frames"] == 7)
    rc, out = run(capsys, "preview", d, row["key"], "--out", tmp_path / "p.png", "--video", tmp_path / "p.mp4",
                  "--tile", 120)
    assert rc == 0
    im = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert im.shape[0] > 2 * 3 * 70 and im.shape[1] > 6 * 120  # 7 frames: two rows of up to 6
    # checkerboard greys and the yellow input-mask outline are drawn
    assert ((im == (205, 205, 205)).all(-1)).sum() > 100 and ((im == (255, 214, 0)).all(-1)).sum() > 20
    with av.open(str(tmp_path / "p.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == row["num_frames"]
    assert main(["preview", str(d), "nope_m000_0000", "--out", str(tmp_path / "x.png")]) == 2  # unknown key


def test_preview_without_frames(job_output_alpha_only, tmp_path, capsys):
    d = job_output_alpha_only
    key = mf.ok_rows(str(d))[0]["key"]
    rc, _ = run(capsys, "preview", d, key, "--out", tmp_path / "n.png", "--tile", 100)
    assert rc == 0 and Image.open(tmp_path / "n.png").size[0] > 300


def test_eval_against_gt(split, capsys, tmp_path):
    d, gt = split
    rc, out = run(capsys, "eval", d, "--gt", gt, "--baselines", "mask,down8", "--json", tmp_path / "e.json",
                  "--no-progress")
    assert rc == 0
    rep = json.loads((tmp_path / "e.json").read_text())
    clips = _gt_frames(d)
    assert len(clips) == 3 * 3 - 1  # masklet 2 of sav_000003 failed
    assert rep["frames"] == sum(map(len, clips.values())) and len(rep["clips"]) == len(clips)  # overlaps once
    o = rep["overall"]
    assert 0 < o["matte"]["mad"] < o["mask"]["mad"] < o["down8"]["mad"]
    assert np.isfinite(o["matte"]["dtssd_boundary"]) and np.isfinite(o["matte"]["dtssd_inside"])
    assert "dtSSD at segment boundaries" in out and "OVERALL matte" in out


def test_eval_perfect_gt_scores_zero(split, capsys, tmp_path):
    d, _ = split
    from mava.loaders import ClipConfig, RandomAccessClips

    ra = RandomAccessClips(str(d), ClipConfig(fields=("alpha",)))
    for r in mf.ok_rows(str(d)):
        a = ra.by_key(r["key"])["alpha"][:, 0].numpy()
        for t, ann in enumerate(r["ann_frames"]):
            p = tmp_path / "gt" / gt_path(r["video_id"], r["masklet_id"], ann)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((a[t] * 255).round().astype(np.uint8)).save(p)
    from mava.eval import evaluate

    rep = evaluate(str(d), str(tmp_path / "gt"), baselines=())
    assert rep.frames == sum(map(len, _gt_frames(d).values()))
    assert all(rep.overall["matte"][k] == 0 for k in ("mad", "mse", "grad", "conn", "dtssd"))
