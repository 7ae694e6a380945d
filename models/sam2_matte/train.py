"""Train SAM2-Matte: one train loop, run in this process or by Ray Train's ``TorchTrainer`` on every
worker of a cluster (DDP over GPUs, or CPUs).

Resuming is exact: the data of step k are a function of (seed, k) (see ``data``), every step reseeds
torch (dropout, SAM 2's click sampling) from (seed, k, rank) and SAM 2's prompt RNG from (seed, k),
and a checkpoint holds the model, the optimiser and k. A run killed at any point and started again
with the same command continues from its last checkpoint with the same losses and parameters as a
run that was never stopped.

Output folder (``--out``, a path or fsspec URL; shared storage on a multi-node cluster):
``train.json`` (the options that define the run), ``checkpoints/step_NNNNNNN.pt``, ``metrics.jsonl``
(one row per logged step), ``model.pt`` (weights only, written at the end) and, with
``--tensorboard``, ``tensorboard/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from models.sam2_matte import config as mcfg

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
METRICS = "metrics.jsonl"
RUN_FILE = "train.json"
FINAL = "model.pt"
LOSS_KEYS = ("loss_l1", "loss_lap", "loss_grad", "loss_bce", "loss_iou", "loss_class")

# options that do not change what is trained (everything else must match to resume)
NOT_FINGERPRINTED = {"out", "stop_after", "ckpt_every", "keep", "log_every", "loader_workers", "workers",
                     "use_gpu", "address", "max_failures", "progress", "tensorboard", "device", "num_cpus", "threads"}


@dataclass
class TrainConfig:
    """Everything a training run needs (the CLI's options)."""

    data: list[str]
    out: str
    weights: list[float] | None = None
    query: str | None = None
    model: str = "tiny"
    init: str | None = None
    image_size: int | None = None
    steps: int = 1000
    stop_after: int | None = None
    batch_size: int = 1
    num_frames: int = 8
    max_objects: int = 3
    augment: bool = True
    lr: float | None = None
    vision_lr: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    correction_clicks: int | None = None
    mask_prompt_prob: float | None = None
    init_cond_frames: int | None = None
    refine_mask_prompt: bool = False
    loss_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    ckpt_every: int = 100
    keep: int = 2
    log_every: int = 10
    loader_workers: int = 2
    workers: int = 0
    use_gpu: bool = False
    address: str | None = None
    num_cpus: int | None = None
    max_failures: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    tensorboard: bool = False

    def recipe(self) -> mcfg.Recipe:
        r = mcfg.default_recipe(self.model)
        over = {k: v for k, v in (("lr", self.lr), ("vision_lr", self.vision_lr), ("weight_decay", self.weight_decay),
                                  ("grad_clip", self.grad_clip),
                                  ("num_correction_pt_per_frame", self.correction_clicks),
                                  ("num_init_cond_frames_for_train", self.init_cond_frames)) if v is not None}
        if self.mask_prompt_prob is not None:
            over["prob_to_use_pt_input_for_train"] = 1.0 - self.mask_prompt_prob
        if self.refine_mask_prompt:
            over["use_mask_input_as_output_without_sam"] = False
        return replace(r, **over)

    def resolution(self) -> int:
        return int(self.image_size or mcfg.variant(self.model).image_size)

    def fingerprint(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in NOT_FINGERPRINTED}
        d["recipe"] = asdict(self.recipe())
        d["resolution"] = self.resolution()
        return d

    def check(self) -> None:
        """Option errors a user can fix, as one-line ValueErrors."""
        mcfg.variant(self.model)
        if mcfg.variant(self.model).checkpoint is not None and not self.init:
            log.warning("training %s from random weights (no --init checkpoint)", self.model)
        if self.weights is not None and len(self.weights) != len(self.data):
            raise ValueError(f"--weight given {len(self.weights)} times for {len(self.data)} --data")
        for name in ("steps", "batch_size", "num_frames", "max_objects", "ckpt_every", "log_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.mask_prompt_prob is not None and not 0.0 <= self.mask_prompt_prob <= 1.0:
            raise ValueError("--mask-prompt-prob must be in 0..1")
        if self.init_cond_frames is not None and not 1 <= self.init_cond_frames <= self.num_frames:
            raise ValueError("--init-cond-frames must be in 1..--num-frames")
        if self.stop_after is not None and not 0 < self.stop_after <= self.steps:
            raise ValueError("--stop-after must be in 1..--steps")
        if self.resolution() % 32:
            raise ValueError(f"--image-size must be a multiple of 32, got {self.resolution()}")


# --- output folder --------------------------------------------------------------------------------


class RunDir:
    """The ``--out`` folder: run options, checkpoints, metrics (local path or fsspec URL)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically where the filesystem can rename (local), else in one put (object stores)."""
        p = self.path(rel)
        self.fs.makedirs(os.path.dirname(p), exist_ok=True)
        if self.local:
            tmp = f"{p}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        else:
            self.fs.pipe_file(p, data)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def checkpoints(self) -> list[tuple[int, str]]:
        """(step, relative path) of the checkpoints, oldest first."""
        out = []
        for p in self.fs.glob(self.path(f"{CKPT_DIR}/step_*.pt")):
            name = os.path.basename(p)
            try:
                out.append((int(name[5:-3]), f"{CKPT_DIR}/{name}"))
            except ValueError:
                continue
        return sorted(out)


def save_checkpoint(run: RunDir, step: int, net, opt, cfg: TrainConfig, world: int) -> str:
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "world_size": world,
                "config": cfg.fingerprint(), "sam2_matte": model_meta(cfg)}, buf)
    rel = f"{CKPT_DIR}/step_{step:07d}.pt"
    run.write_bytes(rel, buf.getvalue())
    for _, old in run.checkpoints()[:-cfg.keep]:
        run.fs.rm(run.path(old))
    return rel


def model_meta(cfg: TrainConfig) -> dict:
    """What predict needs to rebuild the model from a checkpoint."""
    return {"model": cfg.model, "image_size": cfg.resolution(), "recipe": asdict(cfg.recipe())}


def load_latest(run: RunDir) -> tuple[dict, str] | None:
    """The newest checkpoint that reads (a torn one is skipped with a warning), or None."""
    for step, rel in reversed(run.checkpoints()):
        try:
            return torch.load(io.BytesIO(run.read_bytes(rel)), map_location="cpu", weights_only=True), rel
        except (OSError, RuntimeError, EOFError, ValueError) as exn:
            log.warning("checkpoint %s does not load (%s); trying an older one", rel, exn)
    return None


def check_run_file(run: RunDir, cfg: TrainConfig) -> None:
    """Write ``train.json`` on the first start; on a restart refuse different training options."""
    fp = cfg.fingerprint()
    if run.exists(RUN_FILE):
        old = json.loads(run.read_bytes(RUN_FILE))
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        if diff:
            raise ValueError(f"{run.url} holds a run with other options ({', '.join(diff)}); "
                             "use another --out, or the same options to resume it")
        return
    run.write_bytes(RUN_FILE, json.dumps(fp, indent=1, sort_keys=True).encode())


class Metrics:
    """``metrics.jsonl``: rows up to the resumed step are kept (a killed run may have logged later ones)."""

    def __init__(self, run: RunDir, resume_step: int):
        self.run = run
        self.rows: list[dict] = []
        if run.exists(METRICS):
            for line in run.read_bytes(METRICS).decode().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    r = json.loads(line)
                    if r.get("step", 1 << 62) <= resume_step:
                        self.rows.append(r)
        self.flush()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.run.local:   # append as we go; object stores get the whole file at each checkpoint
            with open(self.run.path(METRICS), "a") as f:
                f.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self.run.write_bytes(METRICS, "".join(json.dumps(r) + "\n" for r in self.rows).encode())


def read_metrics(out: str) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    run = RunDir(out)
    return [json.loads(x) for x in run.read_bytes(METRICS).decode().splitlines() if x.strip()]


# --- optimiser ------------------------------------------------------------------------------------


def param_groups(net: torch.nn.Module, recipe: mcfg.Recipe) -> list[dict]:
    """SAM 2's fine-tuning groups: image encoder at ``vision_lr``, the rest at ``lr``; no weight decay
    on biases and ``torch.nn.LayerNorm`` parameters."""
    no_wd = {id(p) for m in net.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters(recurse=False)}
    groups: dict[tuple, list] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        vision = name.startswith("image_encoder.")
        decay = not ("bias" in name or id(p) in no_wd)
        groups.setdefault((vision, decay), []).append(p)
    return [{"params": ps, "vision": vision, "weight_decay": recipe.weight_decay if decay else 0.0}
            for (vision, decay), ps in sorted(groups.items())]


def cosine(step: int, total: int, start: float) -> float:
    """SAM 2's CosineParamScheduler: from `start` down to start/10 over the run."""
    end = start / 10.0
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def _seed_step(net, seed: int, step: int, rank: int) -> None:
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
    net.rng = np.random.default_rng([seed, step])   # SAM2Train's prompt RNG, the same on every rank


# --- the loop -------------------------------------------------------------------------------------


def build_data(cfg: TrainConfig):
    from models.sam2_matte import data

    sc = data.SamplerConfig(num_frames=cfg.num_frames, max_num_objects=cfg.max_objects, resolution=cfg.resolution())
    if not cfg.augment:
        sc = replace(sc, hflip=0.0, degrees=0.0, shear=0.0, jitter=(0.0, 0.0, 0.0), frame_jitter=(0.0, 0.0, 0.0),
                     grayscale=0.0)
    sources = [data.open_source(u, cfg.query if _is_mava(u) else None) for u in cfg.data]
    return data.MattingMix(sources, cfg.weights, sc, seed=cfg.seed)


def _is_mava(url: str) -> bool:
    fs, root = fsspec.core.url_to_fs(url)
    return fs.isdir(root.rstrip("/") + "/manifest")


def train_worker(cfg: TrainConfig, rank: int = 0, world: int = 1, device: torch.device | None = None,
                 wrap: Callable | None = None, report: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) training on one worker; returns the last logged row. `wrap` turns the model into
    its distributed form (Ray Train's ``prepare_model``), `report` receives each logged row."""
    mcfg.require_sam2()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_worker(cfg, rank, world, device, wrap, report)
    finally:
        torch.set_num_threads(threads)


def _train_worker(cfg: TrainConfig, rank: int, world: int, device: torch.device | None, wrap: Callable | None,
                  report: Callable[[dict], None] | None) -> dict:
    from torch.utils.data import DataLoader
    from training.trainer import CORE_LOSS_KEY

    from models.sam2_matte import data, loss, model

    device = device or torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    run = RunDir(cfg.out)
    recipe = cfg.recipe()
    torch.manual_seed(cfg.seed)   # the same random init on every worker and every (re)start
    net = model.build_model(cfg.model, cfg.resolution(), recipe)
    if rank == 0:
        check_run_file(run, cfg)
    latest = load_latest(run)
    start = 0
    if latest is not None:
        state, rel = latest
        if state.get("config") != cfg.fingerprint():
            raise ValueError(f"{rel} was written by a run with other options; use another --out")
        net.load_state_dict(state["model"])
        start = int(state["step"])
        if state.get("world_size", world) != world:
            log.warning("resuming a run of %s workers on %d: the data order differs from then on",
                        state.get("world_size"), world)
    elif cfg.init:
        path = model.checkpoint_path(cfg.init, cfg.model)
        model.load_weights(net, path)
        log.info("initialised from %s", path)
    net.to(device)
    ddp = wrap(net) if wrap is not None else net
    opt = torch.optim.AdamW(param_groups(net, recipe), lr=recipe.lr)
    if latest is not None:
        opt.load_state_dict(latest[0]["optimizer"])
        log.info("resumed from %s at step %d", latest[1], start)
        del latest
    crit = loss.MattingLoss(cfg.loss_weights)
    stop = min(cfg.steps, cfg.stop_after or cfg.steps)
    metrics = Metrics(run, start) if rank == 0 else None
    tb = _tensorboard(run) if (rank == 0 and cfg.tensorboard) else None
    if start >= stop:
        log.info("nothing to do: the run is at step %d (stop at %d)", start, stop)
        return metrics.rows[-1] if metrics and metrics.rows else {}

    ds = build_data(cfg)
    loader = DataLoader(ds, batch_sampler=data.StepBatches(cfg.batch_size, start, stop, rank, world),
                        num_workers=cfg.loader_workers, collate_fn=data.collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    bar = tqdm(total=stop, initial=start, desc="train", disable=not (cfg.progress and rank == 0), unit="step")
    last: dict = {}
    acc: dict[str, float] = {}
    n_acc, t0 = 0, time.time()
    net.train()
    for step, batch in enumerate(loader, start=start):
        _seed_step(net, cfg.seed, step, rank)
        for g in opt.param_groups:
            g["lr"] = cosine(step, cfg.steps, recipe.vision_lr if g["vision"] else recipe.lr)
        batch = batch.to(device, non_blocking=True)
        with amp:
            outs = ddp(batch)
        losses = crit(outs, batch.masks)
        core = losses[CORE_LOSS_KEY]
        if not torch.isfinite(core):
            raise FloatingPointError(f"loss is {core.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        core.backward()
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
        opt.step()
        for k in (CORE_LOSS_KEY, *LOSS_KEYS):
            v = losses[k]
            acc[k] = acc.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        n_acc += 1
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == stop:
            last = {"step": done, "loss": acc[CORE_LOSS_KEY] / n_acc,
                    **{k: acc[k] / n_acc for k in LOSS_KEYS}, "lr": cosine(step, cfg.steps, recipe.lr),
                    "sec_per_step": (time.time() - t0) / n_acc, "bad_samples": ds.bad_samples}
            acc, n_acc, t0 = {}, 0, time.time()
            if rank == 0:
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                log.info("step %d/%d loss %.4f (l1 %.4f lap %.4f bce %.4f iou %.4f class %.4f) lr %.2e %.2fs/step",
                         done, cfg.steps, last["loss"], last["loss_l1"], last["loss_lap"], last["loss_bce"],
                         last["loss_iou"], last["loss_class"], last["lr"], last["sec_per_step"])
                metrics.add(last)
                if tb is not None:
                    for k, v in last.items():
                        if k != "step":
                            tb.add_scalar(k, v, done)
            if report is not None:
                report(last)
        if done % cfg.ckpt_every == 0 or done == stop:
            if rank == 0:
                rel = save_checkpoint(run, done, net, opt, cfg, world)
                metrics.flush()
                log.info("checkpoint %s", rel)
            if world > 1:
                torch.distributed.barrier()
    bar.close()
    if rank == 0 and stop == cfg.steps:
        buf = io.BytesIO()
        torch.save({"model": net.state_dict(), "sam2_matte": model_meta(cfg)}, buf)
        run.write_bytes(FINAL, buf.getvalue())
    if tb is not None:
        tb.close()
    return last


def _tensorboard(run: RunDir):
    if not run.local:
        log.warning("--tensorboard needs a local --out; skipped")
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(run.path("tensorboard"))


# --- Ray Train ------------------------------------------------------------------------------------


def _ray_worker(config: dict) -> None:
    """TorchTrainer's train_loop_per_worker."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    def wrap(net):
        if world == 1:
            return net
        return ray.train.torch.prepare_model(net, move_to_device=False,
                                             parallel_strategy_kwargs={"find_unused_parameters": True})

    train_worker(cfg, rank, world, device, wrap=wrap, report=lambda row: ray.train.report(row))


def run_ray(cfg: TrainConfig) -> dict:
    """Train with Ray Train's TorchTrainer on `cfg.workers` workers (GPUs with `cfg.use_gpu`)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        kwargs: dict = {}
        if cfg.address in (None, "local"):   # a new local cluster: its workers import this checkout
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            kwargs = {"include_dashboard": False, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
            if cfg.num_cpus is not None:
                kwargs["num_cpus"] = cfg.num_cpus
        ray.init(address=cfg.address, **kwargs)
    run = RunDir(cfg.out)
    storage = run.url if not run.local else os.path.abspath(run.root)
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=asdict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name="ray", storage_path=storage, failure_config=FailureConfig(max_failures=cfg.max_failures)))
    trainer.fit()   # raises TrainingFailedError when the workers fail past max_failures
    rows = read_metrics(cfg.out) if run.exists(METRICS) else []
    return rows[-1] if rows else {}


def train(cfg: TrainConfig) -> dict:
    """Train here (``workers == 0``) or on Ray Train (``workers >= 1``); returns the last logged row."""
    cfg.check()
    if cfg.workers >= 1:
        return run_ray(cfg)
    return train_worker(cfg)

