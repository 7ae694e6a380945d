"""SAM2-Matte through SAM 2's own training code (the sam2 extra): MA-V from the real job -> SAM 2's
BatchedVideoDatapoint with soft alpha -> SAM2Train + the matting loss -> checkpoints, exact resume,
Ray Train, predict and eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("training.model.sam2", reason="needs the sam2 extra (make setup)")

from models.sam2_matte import config as mcfg
from models.sam2_matte import data, loss, model, train
from models.sam2_matte.__main__ import main

REPO = Path(__file__).resolve().parents[1]
SIZE = 64   # tiny model input (a multiple of 32)


def tiny_cfg(split: Path, out: Path, **kw) -> train.TrainConfig:
    base = {"data": [str(split)], "out": str(out), "model": "tiny", "image_size": SIZE, "steps": 6, "batch_size": 1,
            "num_frames": 3, "max_objects": 2, "ckpt_every": 2, "log_every": 1, "loader_workers": 0, "progress": False,
            "seed": 0, "threads": 1}
    return train.TrainConfig(**{**base, **kw})


def cli_args(cfg: train.TrainConfig) -> list[str]:
    return ["train", "--data", cfg.data[0], "--out", cfg.out, "--model", cfg.model, "--image-size", str(cfg.image_size),
            "--steps", str(cfg.steps), "--batch-size", str(cfg.batch_size), "--num-frames", str(cfg.num_frames),
            "--max-objects", str(cfg.max_objects), "--ckpt-every", str(cfg.ckpt_every), "--log-every",
            str(cfg.log_every), "--loader-workers", str(cfg.loader_workers), "--seed", str(cfg.seed),
            "--threads", str(cfg.threads), "--no-progress"]


@pytest.fixture(scope="module")
def mava(job_output) -> tuple[Path, Path]:
    """(MA-V split of the real job on the synthetic split, its gt_alpha)."""
    return job_output


@pytest.fixture(scope="module")
def trained(mava, tmp_path_factory) -> tuple[Path, float, float]:
    """A tiny run of 6 steps (in this process) and the loss of fixed batches before and after it."""
    out = tmp_path_factory.mktemp("sam2m") / "run"
    cfg = tiny_cfg(mava[0], out)
    ds = train.build_data(cfg)
    batches = [data.collate([ds[d]]) for d in (100, 101, 102, 103)]   # draws the run never sees
    crit = loss.MattingLoss()

    def fixed_loss(net) -> float:
        net.train()
        total = 0.0
        with torch.no_grad():
            for k, b in enumerate(batches):
                train._seed_step(net, 7, k, 0)
                total += float(crit(net(b), b.masks)["core_loss"])
        return total / len(batches)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the run: a busy 2-core machine runs one thread many times faster
    try:
        torch.manual_seed(cfg.seed)
        net0 = model.build_model("tiny", SIZE, cfg.recipe())
        before = fixed_loss(net0)
        train.train(cfg)
        net = model.build_model("tiny", SIZE, cfg.recipe())
        model.load_weights(net, str(out / train.FINAL))
        after = fixed_loss(net)
    finally:
        torch.set_num_threads(threads)
    return out, before, after


# --- SAM 2 itself ---------------------------------------------------------------------------------


def test_sam2_training_code_is_the_client(tmp_path):
    """`training` is SAM 2's package from the extra; a training/ folder on the path is refused clearly."""
    import sam2
    import training

    mcfg.require_sam2()
    assert Path(training.__file__).parent.parent == Path(sam2.__file__).parent.parent
    assert not (REPO / "training").exists()
    shadow = tmp_path / "training"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    res = subprocess.run([sys.executable, "-c", "from models.sam2_matte.config import require_sam2; require_sam2()"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0 and "is not SAM 2's training code" in res.stderr


def test_published_configs_and_file_names(tmp_path):
    """Every published SAM 2 / 2.1 config composes into a SAM2-Matte training config; checkpoint files
    are found by their published names; a checkpoint of another architecture is refused in one line."""
    names = {v.name: v.checkpoint for v in mcfg.VARIANTS.values() if v.checkpoint}
    assert names["sam2.1_hiera_b+"] == "sam2.1_hiera_base_plus.pt" and names["sam2_hiera_l"] == "sam2_hiera_large.pt"
    assert len(names) == 8
    for name in names:
        c = model.model_config(mcfg.variant(name))
        assert c._target_ == model.MODEL_TARGET and c.image_size == 1024
        assert c.num_correction_pt_per_frame == 7 and c.prob_to_use_pt_input_for_train == 0.5
    assert mcfg.variant("sam2.1_hiera_small.pt").name == "sam2.1_hiera_s"
    assert mcfg.variant("sam2.1_hiera_b+.yaml").name == "sam2.1_hiera_b+"
    assert model.checkpoint_path(str(tmp_path), "sam2.1_hiera_l") == f"{tmp_path}/sam2.1_hiera_large.pt"
    # SAM 2's checkpoint format ({"model": state_dict}) round-trips, strictly
    net = model.build_model("tiny", SIZE)
    torch.save({"model": net.state_dict()}, tmp_path / "ck.pt")
    other = model.build_model("tiny", SIZE)
    model.load_weights(other, str(tmp_path / "ck.pt"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    sd = net.state_dict()
    sd.pop(next(iter(sd)))
    torch.save({"model": sd}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        model.load_weights(other, str(tmp_path / "bad.pt"))


# --- data -----------------------------------------------------------------------------------------


def test_batches_are_sam2_batches_with_soft_alpha(mava):
    from training.utils.data_utils import (
        BatchedVideoDatapoint,
        Frame,
        Object,
        VideoDatapoint,
        collate_fn,
    )

    src = data.open_source(str(mava[0]))
    cfg = data.SamplerConfig(num_frames=4, max_num_objects=3, resolution=SIZE)
    ds = data.MattingMix([src], None, cfg, seed=3)
    points = [ds[d] for d in range(6)]
    b = data.collate(points[:3])
    assert isinstance(b, BatchedVideoDatapoint)
    o = b.masks.shape[1]
    assert b.img_batch.shape == (4, 3, 3, SIZE, SIZE) and b.masks.shape == (4, o, SIZE, SIZE)
    assert b.obj_to_frame_idx.shape == (4, o, 2) and b.num_frames == 4
    assert b.masks.dtype == torch.float32 and 0 <= float(b.masks.min()) and float(b.masks.max()) <= 1
    soft = ((b.masks > 0.02) & (b.masks < 0.98)).float().mean()
    assert soft > 0.005, "alpha targets must stay soft"
    # every object is visible (alpha > 0.5) on the first frame, as SAM 2's sampler requires
    assert bool((b.masks[0].flatten(1).amax(-1) > model.PROMPT_THRESHOLD).all())
    # objects of one video share its frames: obj_to_frame_idx points at the right video
    vids = [p.video for p in points[:3]]
    per_video = [b.metadata.unique_objects_identifier[0, j, 0].item() for j in range(o)]
    assert per_video == [vids[v] for v in b.obj_to_frame_idx[0, :, 1].tolist()]
    assert any(len(p.object_ids) > 1 for p in points), "some videos should give several objects"
    for p in points:
        assert p.frame_ids == list(range(p.frame_ids[0], p.frame_ids[0] + 4))   # consecutive annotated frames
    # SAM 2's own collate turns the same targets into bool; ours keeps them
    p = points[0]
    vdp = VideoDatapoint(frames=[Frame(p.img[t], [Object(k, t, p.alpha[t, k]) for k in range(p.alpha.shape[1])])
                                 for t in range(4)], video_id=0, size=(SIZE, SIZE))
    theirs = collate_fn([vdp], dict_key="all")
    assert theirs.masks.dtype == torch.bool
    ours = data.collate([p])
    assert torch.equal(ours.img_batch, theirs.img_batch) and torch.equal(ours.obj_to_frame_idx, theirs.obj_to_frame_idx)
    assert torch.equal(ours.masks > 0, theirs.masks) and not torch.equal(ours.masks, theirs.masks.float())
    # the same draw gives the same datapoint (workers, restarts)
    again = ds[2]
    assert torch.equal(again.img, points[2].img) and torch.equal(again.alpha, points[2].alpha)


def test_frames_and_alpha_get_the_same_geometry():
    """Frames that *are* the alpha stay equal to it through flip, affine and resize."""
    rng = np.random.default_rng(0)
    a = np.zeros((3, 40, 70), np.uint8)
    a[:, 10:30, 15:40] = 255
    a[:, 12:28, 40:50] = 128
    clip = data.RawClip(np.repeat(a[..., None], 3, axis=-1), a[:, None], [0], [0, 1, 2], "v")
    cfg = data.SamplerConfig(num_frames=3, resolution=SIZE, hflip=1.0, degrees=25, shear=20, jitter=(0, 0, 0),
                             frame_jitter=(0, 0, 0), grayscale=0.0)
    moved = 0
    for _ in range(5):
        img, alpha = data.augment(clip, cfg, rng)
        rgb = img * torch.tensor(model.IMG_STD)[:, None, None] + torch.tensor(model.IMG_MEAN)[:, None, None]
        inside = (rgb - torch.tensor(model.IMG_MEAN)[:, None, None]).abs().amax(1) > 1e-3   # off the mean-colour fill
        diff = (rgb[:, 0] - alpha[:, 0]).abs()
        assert float(diff[inside & (alpha[:, 0] > 0.01)].max()) < 0.02
        plain = data._resize(torch.from_numpy(a[:, None]), SIZE)
        moved += float((alpha - plain).abs().mean()) > 0.01
    assert moved >= 3, "the affine should move the picture"


def test_prompts_come_from_binarised_alpha(mava):
    """SAM 2 samples mask, click and box prompts from bool masks: they are alpha > 0.5."""
    ds = data.MattingMix([data.open_source(str(mava[0]))], None,
                         data.SamplerConfig(num_frames=3, max_num_objects=2, resolution=SIZE), seed=1)
    b = data.collate([ds[0], ds[1]])
    net = model.build_model("tiny", SIZE).train()
    hard = b.masks > model.PROMPT_THRESHOLD
    for pt, box in ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)):
        net.prob_to_use_pt_input_for_train, net.prob_to_use_box_input_for_train = pt, box
        net.rng = np.random.default_rng(0)
        out = net.prepare_prompt_inputs({}, b)
        assert all(torch.equal(m[:, 0], hard[t]) for t, m in out["gt_masks_per_frame"].items())
        if pt == 0:
            assert torch.equal(out["mask_inputs_per_frame"][0][:, 0], hard[0])
            continue
        pts = out["point_inputs_per_frame"][0]
        xy, lab = pts["point_coords"], pts["point_labels"]
        if box:   # box corners (labels 2, 3) around the binarised alpha, SAM 2's noise of <= 20 px
            assert lab.tolist() == [[2, 3]] * len(lab)
            for o in range(len(lab)):
                ys, xs = torch.nonzero(hard[0, o], as_tuple=True)
                assert abs(float(xy[o, 0, 0]) - int(xs.min())) <= 21 and abs(float(xy[o, 1, 1]) - int(ys.max())) <= 21
        else:     # one positive click on the binarised alpha
            assert lab.tolist() == [[1]] * len(lab)
            for o in range(len(lab)):
                x, y = int(xy[o, 0, 0]), int(xy[o, 0, 1])
                assert hard[0, o, y, x]


def test_first_frame_mask_recipe_trains_what_eval_does(mava, tmp_path):
    """--mask-prompt-prob 1 --init-cond-frames 1: every video is prompted with its first frame's mask
    only (no click, box or correction), as predict and eval prompt; bad values are one-line errors."""
    cfg = tiny_cfg(mava[0], tmp_path / "r", mask_prompt_prob=1.0, init_cond_frames=1)
    r = cfg.recipe()
    assert r.prob_to_use_pt_input_for_train == 0.0 and r.num_init_cond_frames_for_train == 1
    assert cfg.fingerprint() != tiny_cfg(mava[0], tmp_path / "r").fingerprint()
    ds = data.MattingMix([data.open_source(str(mava[0]))], None,
                         data.SamplerConfig(num_frames=3, max_num_objects=2, resolution=SIZE), seed=1)
    b = data.collate([ds[0], ds[1]])
    net = model.build_model("tiny", SIZE, r).train()
    for seed in range(8):
        net.rng = np.random.default_rng(seed)
        out = net.prepare_prompt_inputs({}, b)
        assert out["init_cond_frames"] == [0] and out["frames_to_add_correction_pt"] == []
        assert list(out["mask_inputs_per_frame"]) == [0] and not out["point_inputs_per_frame"]
    for bad in ({"mask_prompt_prob": 1.5}, {"init_cond_frames": 4}):
        with pytest.raises(ValueError, match="must be in"):
            tiny_cfg(mava[0], tmp_path / "r", **bad).check()


def test_refine_mask_prompt_trains_the_prompted_frame(mava, tmp_path):
    """--refine-mask-prompt: SAM's decoder turns the first frame's mask prompt (its dense prompt embedding)
    into that frame's matte, which the loss reaches; with SAM 2's default the mask is passed through (only
    the object pointer comes from the decoder). The checkpoint records the choice, and predict decodes the same way."""
    cfg = tiny_cfg(mava[0], tmp_path / "r", mask_prompt_prob=1.0, init_cond_frames=1, refine_mask_prompt=True,
                   steps=2, ckpt_every=2)
    plain = tiny_cfg(mava[0], tmp_path / "p", mask_prompt_prob=1.0, init_cond_frames=1)
    assert cfg.recipe().use_mask_input_as_output_without_sam is False
    assert plain.recipe().use_mask_input_as_output_without_sam is True
    assert cfg.fingerprint() != plain.fingerprint()
    ds = data.MattingMix([data.open_source(str(mava[0]))], None,
                         data.SamplerConfig(num_frames=3, max_num_objects=2, resolution=SIZE), seed=1)
    b = data.collate([ds[0]])
    for c, passed_through in ((cfg, False), (plain, True)):
        torch.manual_seed(0)
        net = model.build_model("tiny", SIZE, c.recipe()).train()
        net.rng = np.random.default_rng(0)
        first = net(b)[0]["multistep_pred_multimasks_high_res"][0]    # the prompted frame's logits
        # SAM 2 passes the binary mask through as +-10 logits, which no parameter makes
        assert (set(first.unique().tolist()) <= {-10.0, 10.0}) == passed_through
        assert first.requires_grad != passed_through
    train.train(cfg)
    from models.sam2_matte.predict import load_model

    net = load_model(str(tmp_path / "r"))
    assert net.use_mask_input_as_output_without_sam is False
    clip = ds[0]
    rgb = clip.img * torch.tensor(model.IMG_STD)[:, None, None] + torch.tensor(model.IMG_MEAN)[:, None, None]
    frames = list((rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    mask = clip.alpha[0, 0].numpy() > model.PROMPT_THRESHOLD
    tracker = model.Tracker(net)
    alphas = list(tracker.run(frames, model.Prompt(mask=mask), len(frames)))
    assert len(alphas) == len(frames) and all(a.shape == mask.shape for a in alphas)
    # the first frame's matte is the decoder's answer to the mask prompt (not a decode from its memory)
    feats, pos, sizes = tracker._feats(model.preprocess(frames[0], tracker.size))
    _, m = tracker._prompt_inputs(model.Prompt(mask=mask), *mask.shape)
    with torch.inference_mode():
        cond = tracker._step(0, True, feats, pos, sizes, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                             len(frames), mask=m)
    np.testing.assert_allclose(alphas[0], tracker._alpha(cond, *mask.shape), atol=1e-6)


def test_tiny_wide_is_the_same_sam2_wider():
    """``tiny-wide``: the tiny structure at twice the width (same SAM 2 parameter names, more of them)."""
    a, w = model.build_model("tiny", SIZE).state_dict(), model.build_model("tiny-wide", SIZE).state_dict()
    assert list(a) == list(w)
    assert sum(v.numel() for v in w.values()) > 1.8 * sum(v.numel() for v in a.values())


def test_mixing_by_weight_and_folder_data(mava, tmp_path):
    """An image-sequence matting folder mixes with MA-V at the given weight; rank/world split the draws."""
    from PIL import Image

    src = data.open_source(str(mava[0]))
    clip = src.sample(0, data.SamplerConfig(num_frames=5, max_num_objects=1, resolution=SIZE), np.random.default_rng(0))
    for c in ("clipA", "clipB"):
        (tmp_path / c / "frames").mkdir(parents=True)
        (tmp_path / c / "alpha").mkdir()
        for t in range(5):
            Image.fromarray(clip.frames[t]).save(tmp_path / c / "frames" / f"{t:05d}.jpg")
            Image.fromarray(clip.alpha[t, 0]).save(tmp_path / c / "alpha" / f"{t:05d}.png")
    folder = data.open_source(str(tmp_path))
    assert isinstance(folder, data.FolderVideos) and len(folder) == 2
    ds = data.MattingMix([src, folder], [1.0, 3.0], data.SamplerConfig(num_frames=3, resolution=SIZE), seed=0)
    picks = np.array([ds.draw(d)[0] for d in range(800)])
    assert 0.70 < picks.mean() < 0.80
    d = int(np.nonzero(picks == 1)[0][0])
    p = ds[d]
    assert p.video >= len(src) and p.alpha.shape == (3, 1, SIZE, SIZE) and ((p.alpha > 0.02) & (p.alpha < 0.98)).any()
    r0 = [x for b in data.StepBatches(2, 0, 3, rank=0, world=2) for x in b]
    r1 = [x for b in data.StepBatches(2, 0, 3, rank=1, world=2) for x in b]
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(12))


def test_loader_items_to_sam2_batch(mava):
    """mava.loaders items (RandomAccessClips) turn into SAM 2's batch with soft alpha."""
    from mava.loaders import ClipConfig, RandomAccessClips

    items = RandomAccessClips(str(mava[0]), ClipConfig(clip_len=4, size=(48, 80)))
    b = data.clips_to_batch([items[0], items[1]], SIZE)
    assert b.img_batch.shape == (4, 2, 3, SIZE, SIZE) and b.masks.shape == (4, 2, SIZE, SIZE)
    assert b.masks.dtype == torch.float32 and ((b.masks > 0.02) & (b.masks < 0.98)).any()


# --- training -------------------------------------------------------------------------------------


def test_loss_falls(trained):
    out, before, after = trained
    rows = train.read_metrics(str(out))
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert after < 0.9 * before, (before, after)   # deterministic: fixed batches, prompts and init
    assert {p.name for p in (out / train.CKPT_DIR).iterdir()} == {"step_0000004.pt", "step_0000006.pt"}
    assert (out / train.FINAL).exists() and json.loads((out / train.RUN_FILE).read_text())["steps"] == 6


def test_resume_after_kill_is_exact(mava, trained, tmp_path):
    """A run SIGKILLed mid-way and started again ends with the losses and weights of the run that was
    never stopped (the `trained` fixture's run, same options)."""
    ref_out = trained[0]
    cfg = tiny_cfg(mava[0], tmp_path / "run", loader_workers=1)
    proc = subprocess.Popen([sys.executable, "-m", "models.sam2_matte", *cli_args(cfg)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / train.METRICS
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(x)["step"] >= 3 for x in metrics.read_text().splitlines() if x):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
    assert not (tmp_path / "run" / train.FINAL).exists()
    assert train.RunDir(cfg.out).checkpoints()[-1][0] in (2, 4)
    assert main(cli_args(cfg)) == 0   # the same command resumes
    got, want = train.read_metrics(cfg.out), train.read_metrics(str(ref_out))
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    a = torch.load(tmp_path / "run" / train.FINAL, weights_only=True)["model"]
    b = torch.load(ref_out / train.FINAL, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a different run in the same folder is refused
    assert main(cli_args(cfg) + ["--lr", "0.01"]) == 2


@pytest.mark.slow
def test_ray_train_torchtrainer_one_cpu_worker(mava, tmp_path):
    import ray

    cfg = tiny_cfg(mava[0], tmp_path / "ray", steps=2, workers=1, address="local", num_cpus=2)
    try:
        last = train.train(cfg)
    finally:
        ray.shutdown()
    assert last["step"] == 2 and np.isfinite(last["loss"])
    assert [r["step"] for r in train.read_metrics(cfg.out)] == [1, 2]
    assert (tmp_path / "ray" / train.FINAL).exists()


# --- predict and eval -----------------------------------------------------------------------------


def test_predict_writes_one_alpha_png_per_frame(trained, synth_split, tmp_path):
    from PIL import Image

    from mava.sample import decode_rle

    vid = synth_split / "sav_000" / "sav_000001.mp4"
    ann = json.loads((synth_split / "sav_000" / "sav_000001_manual.json").read_text())
    m = decode_rle(ann["masklet"][0][0])
    Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out = tmp_path / "alpha"
    assert main(["predict", "--checkpoint", str(trained[0]), "--video", str(vid), "--mask", str(tmp_path / "m.png"),
                 "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{t:05d}.png" for t in range(60)]
    a = np.asarray(Image.open(files[5]))
    assert a.shape == m.shape and a.dtype == np.uint8
    out2 = tmp_path / "alpha_box"
    assert main(["predict", "--checkpoint", str(trained[0] / train.FINAL), "--video", str(vid), "--box", "10,8,60,50",
                 "--out", str(out2), "--every", "4", "--threads", "1", "--no-progress"]) == 0
    assert sorted(f.name for f in out2.iterdir()) == [f"{t:05d}.png" for t in range(0, 60, 4)]
    assert main(["predict", "--checkpoint", str(trained[0]), "--video", str(tmp_path / "nope.mp4"), "--box", "1,1,5,5",
                 "--out", str(out2)]) == 2


def test_video_reader_matches_the_pipeline_decoder(tmp_path):
    """models cannot import pipeline: its small PyAV reader must give the pipeline decoder's frames,
    display rotation included."""
    from pipeline import synth, video

    specs = synth.make_specs(1, 8, seed=3, sizes=["96x64"])
    split = synth.generate_split(tmp_path, [s.__class__(**{**s.__dict__, "rotate": 90}) for s in specs], "sav_train")
    mp4 = next(split.rglob("*.mp4"))
    from models.sam2_matte.predict import open_frames

    mine = np.stack(list(open_frames(str(mp4))))
    ref = video.open_video(str(mp4), "pyav").get(range(8))
    assert mine.shape == ref.shape == (8, 64, 96, 3) and np.array_equal(mine, ref)


def test_eval_reports_mava_eval_metrics(trained, mava, capsys):
    from mava import eval as mava_eval

    assert main(["eval", "--checkpoint", str(trained[0]), "--data", str(mava[0]), "--gt", str(mava[1]),
                 "--overall-only", "--threads", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    rows = {ln.split()[1]: [float(x) for x in ln.split()[2:]] for ln in text.splitlines() if ln.startswith("OVERALL")}
    assert set(rows) == {"sam2_matte", "mask", "mava"} and all(np.isfinite(rows["sam2_matte"]))
    ref = mava_eval.evaluate(str(mava[0]), str(mava[1]), ("mask",)).overall
    assert rows["mask"][0] == pytest.approx(ref["mask"]["mad"], abs=1e-3)
    assert rows["mava"][0] == pytest.approx(ref["matte"]["mad"], abs=1e-3)
