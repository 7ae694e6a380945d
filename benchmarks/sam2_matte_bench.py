"""SAM2-Matte on CPU: does the tiny model, trained on MA-V made by our own job, matte better than the
binary mask it is prompted with?

    python -m benchmarks.sam2_matte_bench [--workdir build/sam2_matte_bench] [--steps 3000] [--eval-every 500]

1. a synthetic SA-V split with ground-truth alpha (``pipeline.synth``);
2. MA-V from it by the real job (``pipeline.run --matter guided`` on a local Ray cluster);
3. ``train --model tiny`` on that MA-V (256 px, 8-frame clips, first-frame mask prompts refined by the
   decoder: ``--mask-prompt-prob 1 --init-cond-frames 1 --refine-mask-prompt``, no augmentation), paused
   every ``--eval-every`` steps (``--stop-after``; each chunk resumes the run exactly), and after each
   chunk ``eval`` on the same clips against the ground truth: SAM2-Matte (prompted with each clip's
   first-frame SA-V mask) vs the binary masks themselves and vs MA-V's own pseudo-labels.

Prints MAD (x1e3) of each at each evaluation and writes a plot of the loss and MAD against steps (after
every evaluation) and, at the end, a picture of the mattes (``<plot>_mattes.png``).
Rerunning with the same --workdir reuses the data and continues the run (a larger --steps is a new run).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("sam2_matte_bench")


def make_mava(work: Path, videos: int, frames: int) -> tuple[Path, Path]:
    """(MA-V split folder, gt_alpha folder), made once per workdir."""
    from pipeline import synth

    data = work / "data"
    split = data / "sav_train"
    if not (split / synth.GT_DIR).is_dir():
        bg = str(synth.DEFAULT_BG) if synth.DEFAULT_BG.exists() else ""
        specs = synth.make_specs(videos, frames, seed=1, sizes=["160x96", "96x160"], background=bg)
        synth.generate_split(data, specs, "sav_train")
    out = work / "mava"
    if not (out / "sav_train" / "run.json").exists():
        cmd = [sys.executable, "-m", "pipeline.run", "--split", "sav_train", "--data-root", str(data), "--out", str(out),
               "--matter", "guided", "--address", "local", "--num-cpus", "2", "--videos-per-shard", "1",
               "--no-progress", "--log-level", "WARNING"]
        subprocess.run(cmd, check=True)
    return out / "sav_train", split / synth.GT_DIR


def run_name(cfg) -> str:
    """The run folder of these training options (the same options continue the same run)."""
    parts = [f"run_{cfg.steps}", cfg.model, str(cfg.resolution()), f"f{cfg.num_frames}", f"b{cfg.batch_size}"]
    if cfg.augment:
        parts.append("aug")
    if cfg.mask_prompt_prob is not None:
        parts.append(f"mask{cfg.mask_prompt_prob:g}")
    if cfg.init_cond_frames is not None:
        parts.append(f"cond{cfg.init_cond_frames}")
    if cfg.refine_mask_prompt:
        parts.append("refine")
    if cfg.lr is not None:
        parts.append(f"lr{cfg.lr:g}")
    parts += [f"{k[5:]}{v:g}" for k, v in sorted(cfg.loss_weights.items())]
    return "_".join(parts)


def evaluate(run: Path, split: Path, gt: Path, threads: int) -> dict[str, float]:
    """Overall MAD of SAM2-Matte (newest checkpoint), the mask and MA-V's matte on every clip, and per
    synthetic object (masklet id: 0 feathered ellipse, 1 hair-like strands, 2 motion-blurred box)."""
    import torch

    from models.sam2_matte import evaluate as ev
    from models.sam2_matte.predict import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rep = ev.evaluate(load_model(str(run)), str(split), str(gt))
    finally:
        torch.set_num_threads(old)
    per: dict[str, dict[str, list]] = {}
    for c in rep.clips:   # clip names end with the masklet id
        for m, sc in c.methods.items():
            per.setdefault(c.clip[-3:], {}).setdefault(m, []).append((sc["mad"], c.frames))
    objects = {o: {m: sum(a * n for a, n in v) / max(1, sum(n for _, n in v)) for m, v in ms.items()}
               | {"frames": sum(n for _, n in next(iter(ms.values())))} for o, ms in sorted(per.items())}
    return {m: s["mad"] for m, s in rep.overall.items()} | {"frames": rep.frames, "objects": objects}


def visualise(run: Path, split: Path, gt: Path, path: Path, threads: int, frames: tuple[int, ...] = (0, 4, 9, 14)) -> None:
    """A picture of every clip at a few annotated frames: the frame, the ground truth, the SA-V mask, MA-V's
    matte and SAM2-Matte's (newest checkpoint), with each one's MAD x1e3 on that frame."""
    import matplotlib

    matplotlib.use("Agg")
    import fsspec
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from mava.eval import gt_path, read_alpha_png
    from mava.manifest import as_split
    from mava.schema import Col
    from models.sam2_matte import evaluate as ev
    from models.sam2_matte.model import Prompt, Tracker
    from models.sam2_matte.predict import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    tracker = Tracker(load_model(str(run)))
    sp = as_split(str(split))
    gfs = fsspec.filesystem("file")
    panels = []
    try:
        for name, rows in ev.clips(str(split)):
            anns, fr, mava_a, masks = ev.read_clip(sp, rows)
            first = next((i for i in range(len(anns)) if masks[i].any()), None)
            if first is None:
                continue
            preds = list(tracker.run(fr[first:], Prompt(mask=masks[first]), len(anns) - first))
            for j in frames:
                k = first + j
                if k >= len(anns):
                    continue
                p = gt / gt_path(rows[0][Col.VIDEO_ID], rows[0][Col.MASKLET_ID], anns[k])
                g = read_alpha_png(gfs, str(p)) if p.exists() else np.zeros(masks[k].shape)
                panels.append((f"{name} t={j}", fr[k], g, masks[k].astype(float), mava_a[k] / 255.0, preds[k - first]))
    finally:
        torch.set_num_threads(old)
    cols = ("frame", "ground truth", "SA-V mask", "MA-V matte", "SAM2-Matte")
    fig, axes = plt.subplots(len(panels), 5, figsize=(10, 1.9 * len(panels) * max(1, fr.shape[1] / fr.shape[2]) + 0.5),
                             squeeze=False)
    for r, (label, f, g, *alphas) in enumerate(panels):
        axes[r, 0].imshow(f)
        axes[r, 0].set_ylabel(label, fontsize=6)
        axes[r, 1].imshow(g, cmap="gray", vmin=0, vmax=1)
        for c, a in enumerate(alphas, start=2):
            axes[r, c].imshow(a, cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xlabel(f"MAD {1e3 * np.abs(a - g).mean():.1f}", fontsize=6, labelpad=1)
        for c in range(5):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(rows: list[dict], evals: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    a.plot(steps, loss, color="0.75", lw=0.8, label="loss (logged)")
    k = max(1, len(loss) // 20)
    if len(loss) >= k:
        a.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), color="C0", label=f"mean of {k}")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss (core_loss)")
    a.legend()
    es = [e["step"] for e in evals]
    b.plot(es, [e["sam2_matte"] for e in evals], "o-", color="C3", label="SAM2-Matte (tiny)")
    b.axhline(evals[-1]["mask"], color="k", ls="--", label="SA-V binary masks (every frame)")
    b.axhline(evals[-1]["mava"], color="C2", ls=":", label="MA-V pseudo-label (training target)")
    b.set_yscale("log")
    b.set_xlabel("step")
    b.set_ylabel("MAD x1e3 vs ground truth")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="build/sam2_matte_bench", help="data, MA-V, the run and the plot")
    p.add_argument("--videos", type=int, default=3, help="synthetic videos (60 frames, 15 annotated, each)")
    p.add_argument("--frames", type=int, default=60, help="video frames per synthetic video")
    p.add_argument("--steps", type=int, default=3000, help="training steps (the lr schedule's length)")
    p.add_argument("--eval-every", type=int, default=500, help="evaluate after every N steps")
    p.add_argument("--image-size", type=int, default=256,
                   help="tiny model input size (the hair needs the pixels: at 160 the run stops at 1.02x the masks)")
    p.add_argument("--num-frames", type=int, default=8,
                   help="frames per training clip (SAM 2's 8; with 4, the temporal encodings of memories 3-6 frames "
                        "back, used on the 15-frame tracks scored, are never trained)")
    p.add_argument("--batch-size", type=int, default=2, help="videos per step")
    p.add_argument("--augment", action="store_true", help="SAM 2's augmentations (off: fit these clips)")
    p.add_argument("--model", default="tiny", help="CPU model config (tiny, tiny-wide)")
    p.add_argument("--mask-prompt-prob", type=float, default=1.0,
                   help="train --mask-prompt-prob (1: always the first-frame mask, as eval; SAM 2's recipe: 0.5)")
    p.add_argument("--init-cond-frames", type=int, default=1, help="train --init-cond-frames (SAM 2's recipe: 2)")
    p.add_argument("--refine-mask-prompt", action=argparse.BooleanOptionalAction, default=True,
                   help="train --refine-mask-prompt (the prompted frame's matte decoded from its mask and image, "
                        "trained; --no-refine-mask-prompt: SAM 2's pass-through)")
    p.add_argument("--lr", type=float, default=None, help="train --lr and --vision-lr (default the tiny recipe's 1e-3)")
    p.add_argument("--loss-weight", action="append", default=[], metavar="NAME=W", help="train --loss-weight")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    p.add_argument("--plot", help="plot path (default <workdir>/sam2_matte_bench.png)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from models.sam2_matte import config as mcfg

    mcfg.require_sam2()
    from models.sam2_matte.train import TrainConfig, read_metrics, train

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    split, gt = make_mava(work, args.videos, args.frames)
    weights = {("loss_" + k if not k.startswith("loss_") else k): float(v)
               for k, _, v in (w.partition("=") for w in args.loss_weight)}
    cfg = TrainConfig(data=[str(split)], out="", model=args.model, image_size=args.image_size, steps=args.steps,
                      batch_size=args.batch_size, num_frames=args.num_frames, augment=args.augment,
                      mask_prompt_prob=args.mask_prompt_prob, init_cond_frames=args.init_cond_frames,
                      refine_mask_prompt=args.refine_mask_prompt,
                      lr=args.lr, vision_lr=args.lr, loss_weights=weights,
                      ckpt_every=args.eval_every, keep=1, log_every=5, loader_workers=1, threads=args.threads,
                      progress=False)
    run = work / run_name(cfg)
    cfg.out = str(run)
    evals_file = run / "bench_evals.json"
    evals = json.loads(evals_file.read_text()) if evals_file.exists() else []
    print(f"{'step':>6} {'loss':>10} {'SAM2-Matte MAD':>15} {'mask MAD':>9} {'MA-V MAD':>9} {'s/step':>7}")
    for e in evals:
        print(f"{e['step']:6d} {e['loss']:10.3f} {e['sam2_matte']:15.3f} {e['mask']:9.3f} {e['mava']:9.3f} {e['sec']:7.2f}")
    done = evals[-1]["step"] if evals else 0
    path = Path(args.plot) if args.plot else work / "sam2_matte_bench.png"
    prompts = ("first-frame mask prompts" if args.mask_prompt_prob == 1 and args.init_cond_frames == 1
               else "SAM 2's prompt recipe") + (", refined" if args.refine_mask_prompt else "")
    title = (f"SAM2-Matte {args.model} on MA-V ({args.videos} synthetic videos, guided matter), CPU, "
             f"{args.image_size}px, {args.num_frames}-frame clips, {prompts}")
    for stop in range(done + args.eval_every, args.steps + args.eval_every, args.eval_every):
        stop = min(stop, args.steps)
        t0 = time.time()
        cfg.stop_after = stop
        last = train(cfg)
        sec = (time.time() - t0) / max(1, stop - done)
        rows = [r for r in read_metrics(str(run)) if done < r["step"] <= stop]
        mad = evaluate(run, split, gt, args.threads)
        e = {"step": stop, "loss": sum(r["loss"] for r in rows) / max(1, len(rows)), "sec": sec, **mad}
        evals.append(e)
        evals_file.write_text(json.dumps(evals, indent=1))
        print(f"{stop:6d} {e['loss']:10.3f} {e['sam2_matte']:15.3f} {e['mask']:9.3f} {e['mava']:9.3f} {sec:7.2f}",
              flush=True)
        done = stop
        del last
        plot(read_metrics(str(run)), evals, path, title)   # after every evaluation: a stopped run has one too
    if not evals:
        print("nothing to do")
        return 1
    plot(read_metrics(str(run)), evals, path, title)
    e = evals[-1]
    print(f"SAM2-Matte (tiny, {e['step']} steps) MAD {e['sam2_matte']:.3f} vs binary mask MAD {e['mask']:.3f} "
          f"(ratio {e['sam2_matte'] / e['mask']:.2f}; MA-V pseudo-labels {e['mava']:.3f}) over {e['frames']} frames "
          f"of {args.videos} videos; beats the mask: {'yes' if e['sam2_matte'] < e['mask'] else 'no'}")
    for o, ms in e.get("objects", {}).items():
        print(f"  object {o}: SAM2-Matte MAD {ms['sam2_matte']:.2f} vs mask {ms['mask']:.2f} (MA-V {ms['mava']:.2f}) "
              f"over {ms['frames']} frames")
    b = min(evals, key=lambda x: x["sam2_matte"])
    print(f"best: MAD {b['sam2_matte']:.3f} at step {b['step']}")
    vis = path.with_name(path.stem + "_mattes.png")
    visualise(run, split, gt, vis, args.threads)
    print(f"plot: {path}; mattes: {vis}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
