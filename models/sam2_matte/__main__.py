"""``python -m models.sam2_matte {train,predict,eval}``: train SAM2-Matte on MA-V, matte videos, score it.

Exit codes: 0 done; 1 the work failed (training error, nothing scored); 2 bad input or setup (a
one-line error: missing sam2 extra, unreadable data, wrong options).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from models.sam2_matte import config as mcfg


def _loss_weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return ("loss_" + name if not name.startswith("loss_") else name), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. lap=2), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="python -m models.sam2_matte", formatter_class=fmt,
                                description="SAM2-Matte: SAM 2 fine-tuned into a video matting model on MA-V, "
                                            "through SAM 2's own training code (the sam2 extra).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="logging level")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    models = ", ".join(mcfg.VARIANTS)

    t = sub.add_parser("train", help="train (or resume) SAM2-Matte here or on Ray Train", formatter_class=fmt,
                       parents=[common])
    t.add_argument("--data", action="append", required=True, metavar="DIR_OR_URL",
                   help="an MA-V split folder (<out>/<split>) or an image-sequence matting folder "
                        "(<clip>/frames/*.jpg + <clip>/alpha/*.png); path or fsspec URL; repeat to mix")
    t.add_argument("--weight", action="append", type=float, metavar="W",
                   help="sampling weight of each --data, in order (default: 1 each)")
    t.add_argument("--query", help="SQL over each MA-V manifest selecting the keys to train on, e.g. "
                                   "\"select key from manifest where qc = 'pass'\"")
    t.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, model.pt (path or URL; "
                                                "shared storage on a multi-node cluster); rerun to resume")
    t.add_argument("--model", default="tiny", help=f"model: {models}")
    t.add_argument("--init", metavar="CKPT", help="SAM 2 checkpoint to start from: a file, or a folder holding the "
                                                  "published file name of --model (e.g. sam2.1_hiera_base_plus.pt)")
    t.add_argument("--image-size", type=int, help="square input size (default: the model's, 1024; tiny 128)")
    t.add_argument("--steps", type=int, default=1000, help="optimiser steps of the whole run (the lr schedule's length)")
    t.add_argument("--stop-after", type=int, help="stop after this step (with a checkpoint); rerun to continue")
    t.add_argument("--batch-size", type=int, default=1, help="videos per step and worker")
    t.add_argument("--num-frames", type=int, default=8, help="consecutive annotated frames per video")
    t.add_argument("--max-objects", type=int, default=3, help="objects per video (those visible on its first frame)")
    t.add_argument("--no-augment", action="store_true", help="no flips, affine or colour jitter")
    t.add_argument("--lr", type=float, help="learning rate (default: 5e-6, SAM 2's fine-tuning; tiny 1e-3)")
    t.add_argument("--vision-lr", type=float, help="image encoder learning rate (default 3e-6; tiny 1e-3)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1; none on biases, LayerNorm)")
    t.add_argument("--grad-clip", type=float, help="gradient norm clip (default 0.1; tiny 1.0; 0 = off)")
    t.add_argument("--correction-clicks", type=int, help="correction clicks per corrected frame (default 7; tiny 2)")
    t.add_argument("--mask-prompt-prob", type=float,
                   help="probability that a video is prompted with its mask rather than a click or box (default "
                        "0.5, SAM 2's; 1 trains exactly what predict/eval do: a first-frame mask, then tracking)")
    t.add_argument("--init-cond-frames", type=int,
                   help="prompted frames per video: the first plus up to N-1 random others (default 2, SAM 2's)")
    t.add_argument("--refine-mask-prompt", action="store_true",
                   help="SAM's decoder refines a mask prompt with its frame's image into that frame's matte, and the "
                        "loss trains it (default, SAM 2's: the mask is passed through as that frame's output)")
    t.add_argument("--loss-weight", action="append", type=_loss_weight, default=[], metavar="NAME=W",
                   help="loss term weight: l1 (20), lap (2), grad (0), bce (20), iou (1), class (1)")
    t.add_argument("--seed", type=int, default=0, help="seed of the data order, transforms, prompts, dropout")
    t.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    t.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    t.add_argument("--log-every", type=int, default=10, help="log (mean) losses every N steps")
    t.add_argument("--loader-workers", type=int, default=2, help="DataLoader processes per training worker")
    t.add_argument("--workers", type=int, default=0,
                   help="Ray Train workers (TorchTrainer, DDP); 0 = train in this process without Ray")
    t.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    t.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS / the job's cluster, else a new "
                                     "local one; 'local' forces a new local one)")
    t.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray cluster")
    t.add_argument("--max-failures", type=int, default=0, help="Ray Train restarts after a worker or node failure "
                                                               "(each resumes from the last checkpoint)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device without Ray")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; on a busy machine 1 "
                                               "can be many times faster than oversubscribed OpenMP threads)")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars (local --out)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    pr = sub.add_parser("predict", help="matte a video from a first-frame mask or box", formatter_class=fmt,
                        parents=[common])
    pr.add_argument("--checkpoint", required=True, help="SAM2-Matte checkpoint, training --out folder, or a "
                                                        "published SAM 2 checkpoint (with --model)")
    pr.add_argument("--video", required=True, help="video file (mp4, ...) or folder of frames; path or URL")
    g = pr.add_mutually_exclusive_group(required=True)
    g.add_argument("--mask", metavar="PNG", help="first-frame mask (pixels >= 128), the video's size")
    g.add_argument("--box", metavar="x0,y0,x1,y1", help="first-frame box in video pixels")
    pr.add_argument("--out", required=True, help="folder for <frame:05d>.png alpha mattes (8-bit, video size)")
    pr.add_argument("--every", type=int, default=1, help="matte every N-th frame only (tracking on those frames)")
    pr.add_argument("--model", help=f"model of a plain SAM 2 checkpoint: {models}")
    pr.add_argument("--image-size", type=int, help="input size (default: the checkpoint's)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    pr.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="score against ground truth with mava eval's metrics", formatter_class=fmt,
                       parents=[common])
    e.add_argument("--checkpoint", required=True, help="as for predict")
    e.add_argument("--data", required=True, help="MA-V split folder whose clips are tracked and scored (needs frames)")
    e.add_argument("--gt", required=True, help="ground truth <GT>/<video_id>/<masklet_id:03d>/<ann_frame:05d>.png "
                                               "(e.g. the synthetic split's gt_alpha/)")
    e.add_argument("--model", help="model of a plain SAM 2 checkpoint")
    e.add_argument("--image-size", type=int, help="input size (default: the checkpoint's)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    e.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    e.add_argument("--limit", type=int, help="score only the first N clips")
    e.add_argument("--band-radius", type=int, default=10, help="transition band width for MAD-band (px)")
    e.add_argument("--overall-only", action="store_true", help="print only the overall rows")
    e.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _run(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    if getattr(args, "threads", None) and args.cmd != "train":   # train sets (and restores) its own
        torch.set_num_threads(args.threads)
    try:
        return _command(args)
    finally:
        torch.set_num_threads(threads)


def _command(args: argparse.Namespace) -> int:
    if args.cmd == "train":
        from models.sam2_matte.train import TrainConfig, train

        cfg = TrainConfig(
            data=args.data, out=args.out, weights=args.weight, query=args.query, model=args.model, init=args.init,
            image_size=args.image_size, steps=args.steps, stop_after=args.stop_after, batch_size=args.batch_size,
            num_frames=args.num_frames, max_objects=args.max_objects, augment=not args.no_augment, lr=args.lr,
            vision_lr=args.vision_lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
            correction_clicks=args.correction_clicks, mask_prompt_prob=args.mask_prompt_prob,
            init_cond_frames=args.init_cond_frames, refine_mask_prompt=args.refine_mask_prompt,
            loss_weights=dict(args.loss_weight), seed=args.seed,
            ckpt_every=args.ckpt_every, keep=args.keep, log_every=args.log_every, loader_workers=args.loader_workers,
            workers=args.workers, use_gpu=args.gpu, address=args.address, num_cpus=args.num_cpus,
            max_failures=args.max_failures, device=args.device, threads=args.threads, progress=not args.no_progress,
            tensorboard=args.tensorboard)
        last = train(cfg)
        print(json.dumps({"out": args.out, **{k: v for k, v in last.items() if k in ("step", "loss")}}))
        return 0
    if args.cmd == "predict":
        from models.sam2_matte.predict import predict

        files = predict(args.checkpoint, args.video, args.out, mask=args.mask, box=args.box, every=args.every,
                        model=args.model, image_size=args.image_size, device=args.device, progress=not args.no_progress)
        print(f"{len(files)} alpha PNGs in {args.out}")
        return 0
    if args.cmd == "eval":
        from models.sam2_matte import evaluate as ev
        from models.sam2_matte.predict import load_model

        dev = _device(args.device)
        net = load_model(args.checkpoint, args.model, args.image_size, dev)
        rep = ev.evaluate(net, args.data, args.gt, dev, args.band_radius, args.limit, progress=not args.no_progress)
        print(ev.render(rep, per_clip=not args.overall_only))
        if args.json:
            import fsspec

            with fsspec.open(args.json, "w") as f:
                json.dump(rep.as_dict(), f, indent=1)
        return 0 if rep.frames else 1
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from mava.sample import MissingFramesError

    try:
        mcfg.require_sam2()
        return _run(args)
    except (mcfg.MissingExtra, ValueError, FileNotFoundError, KeyError, MissingFramesError) as exn:
        msg = exn.args[0] if isinstance(exn, KeyError) and exn.args else exn
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
