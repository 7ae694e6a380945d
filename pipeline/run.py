"""``python -m pipeline.run --split sav_train``: turn an SA-V split into MA-V shards on Ray."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import subprocess
import sys
from pathlib import Path

from mava import schema
from models.base import MatterConfig, available_matters
from mava.folder import SplitDir, UnreadableFile
from models.presets import MATTER_PRESETS, describe_preset, preset_config
from pipeline.executor import ResourceConfig
from pipeline.job import JobConfig, JobError, JobResult, run_job
from pipeline.plan import parse_shard_spec
from pipeline.reader import ReaderConfig

log = logging.getLogger("pipeline.run")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``error: ...``) and exit 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is less than {lo}")
        return v
    parse.__name__ = f"int>={lo}"
    return parse


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1]")
    return v


def _shard_spec(text: str) -> set[int]:
    try:
        shards = parse_shard_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not shards:
        raise argparse.ArgumentTypeError(f"{text!r} names no shard")
    return shards


def _long_side(text: str) -> int:
    v = _int_at_least(64)(text)
    if v % 64:
        raise argparse.ArgumentTypeError(f"{v} is not a multiple of 64 (the model's latent grid)")
    return v


positive = _int_at_least(1)
non_negative = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m pipeline.run",
        description="Matte every masklet of an SA-V split and write MA-V: WebDataset shards, a parquet "
                    "manifest and a done marker per shard under <out>/<split>/. Reruns skip finished shards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--split", required=True, help="split folder name under --data-root, e.g. sav_train")
    io.add_argument("--data-root", default="data", help="SA-V root: local path or fsspec URL")
    io.add_argument("--out", default="out/mava", help="output root (path or fsspec URL); writes <out>/<split>/")
    io.add_argument("--masklets", choices=["manual", "auto", "all"], default="manual",
                    help="which masklets to matte")
    io.add_argument("--segment-len", type=_int_at_least(1), default=12,
                    help=f"annotated frames per segment (1..{schema.MAX_SEGMENT_LEN})")
    io.add_argument("--frames", choices=["jpg", "none"], default="jpg",
                    help="also store the RGB frames of each segment as JPEG (needed for training)")
    io.add_argument("--backend", choices=["decord", "pyav"], default="decord", help="video decoder")
    sh = p.add_argument_group("shards")
    sh.add_argument("--videos-per-shard", type=positive, default=8, help="videos per shard (fixes the shard plan)")
    sh.add_argument("--shards", type=_shard_spec, default=None,
                    help="only these shards of the plan, e.g. '3,7-9' (redone)")
    sh.add_argument("--retry-failed", action="store_true",
                    help="redo finished shards whose manifest has failed rows (and unfinished ones)")
    sh.add_argument("--redo-mismatched", action="store_true",
                    help="redo finished shards written with another fingerprint (matter, weights or an "
                         "output-changing option) or with unreadable done markers; without it such a rerun "
                         "refuses (exit 2) instead of mixing")
    sh.add_argument("--replan", action="store_true",
                    help="rewrite an output written with another shard plan (--videos-per-shard): every shard of "
                         "the old plan is removed, then the whole split is written with this one; without it such "
                         "a rerun refuses (exit 2). Not with --shards")
    sh.add_argument("--verify-skipped", action="store_true",
                    help="before skipping a finished shard, also check its tar's sha256 against the done marker "
                         "(always checked: the tar's size and the manifest's sha256)")
    sh.add_argument("--max-matter-failures", type=_fraction, default=0.5,
                    help="a shard where the matter fails on more than this fraction of the samples it was given "
                         "is not marked done and fails the run (a guard against unrecognised system errors)")
    sh.add_argument("--lease-timeout", type=positive, default=300,
                    help="seconds without heartbeat after which another run's lease on the output is stale "
                         "and taken over")
    sh.add_argument("--limit-videos", type=positive, default=None, help="use only the first N videos of the split")
    m = p.add_argument_group("matter")
    m.add_argument("--matter", default="videomama",
                   help=f"matter name ({', '.join(available_matters())}) or 'module:Factory'")
    m.add_argument("--checkpoint", default=None, help="VideoMaMa checkpoint folder (holds unet/)")
    m.add_argument("--base-model", default=None, help="Stable Video Diffusion base folder (holds vae/)")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    m.add_argument("--preset", choices=sorted(MATTER_PRESETS), default="default",
                   help="videomama option set. 'release' reproduces the official VideoMaMa inference CLI "
                        f"({describe_preset('release')}): clips stretched to 1024x576 with PIL, mask "
                        "re-thresholded at 127, fp16 UNet and VAE, alpha truncated to 8 bits. 'default': aspect "
                        "kept, soft masks, bf16 on GPU, rounding. Flags given explicitly override the preset; "
                        "see README 'Release parity'")
    # The flags below default to the preset's value (argparse.SUPPRESS: absent unless given explicitly).
    m.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default=argparse.SUPPRESS,
                   help="UNet dtype; auto = bf16 on GPU, fp32 on CPU " + _preset_note("dtype"))
    m.add_argument("--vae-dtype", choices=["auto", "fp32", "bf16", "fp16"], default=argparse.SUPPRESS,
                   help="VAE dtype; auto = --dtype, but fp32 when that is fp16 and the VAE asks for upcasting "
                        + _preset_note("vae_dtype"))
    m.add_argument("--long-side", type=_long_side, default=argparse.SUPPRESS,
                   help="model resolution: long side in pixels (x64) " + _preset_note("long_side"))
    m.add_argument("--resize", choices=["keep-aspect", "stretch"], default=argparse.SUPPRESS,
                   help="keep-aspect: long side --long-side, sides snapped to 64; stretch: every clip to "
                        "--long-side x --long-side*9/16 (the release CLI's 1024x576), aspect not kept "
                        + _preset_note("resize"))
    m.add_argument("--resample", choices=["torch", "pil"], default=argparse.SUPPRESS,
                   help="torch: float bilinear (antialiased) on the model's device; pil: PIL bilinear on uint8 on "
                        "the host, mattes 8-bit at model size then PIL back to the source size (the release) "
                        + _preset_note("resample"))
    m.add_argument("--mask-threshold", type=_mask_threshold, default=argparse.SUPPRESS, metavar="{none,0..254}",
                   help="binarise the resized mask (0..255 scale, > N is foreground) as the release CLI does at "
                        "127, or 'none' to keep it soft as its demo and training " + _preset_note("mask_threshold"))
    m.add_argument("--alpha-8bit", choices=["round", "truncate"], default=argparse.SUPPRESS,
                   help="alpha to 8 bits: round, or truncate as the release " + _preset_note("alpha_8bit"))
    m.add_argument("--alpha-precision", choices=["fp32", "vae"], default=argparse.SUPPRESS,
                   help="dtype of the alpha map after decoding (x/2+0.5, clamp, RGB mean, x255): fp32, or the VAE's "
                        "dtype as the release (fp16 there) " + _preset_note("alpha_precision"))
    m.add_argument("--batch-size", type=positive, default=1, help="segments per forward pass")
    m.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same mattes)")
    m.add_argument("--compile", action="store_true", help="torch.compile the model (slow first batch)")
    m.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (with --compile)")
    m.add_argument("--decode-chunk", type=non_negative, default=argparse.SUPPRESS,
                   help="VAE decode chunk in frames; the temporal decoder mixes frames only inside a chunk, so "
                        "this changes the mattes: 8 = the release (8 then 4 for 12 frames); 12 or 0 (whole "
                        "segment) deviate from it " + _preset_note("decode_chunk"))
    m.add_argument("--posterior", choices=["sample", "mode"], default=argparse.SUPPRESS,
                   help="VAE posterior of the condition latents: seeded sample (as released) or mode "
                        + _preset_note("posterior"))
    m.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning on GPU")
    m.add_argument("--channels-last", action="store_true", help="channels-last memory format for the VAE")
    m.add_argument("--pin-memory", action="store_true", help="pinned host buffers, non-blocking uploads (GPU)")
    m.add_argument("--fused-group-norm", action="store_true",
                   help="VAE GroupNorm(+SiLU) as split-reduction Triton kernels on CUDA (torch elsewhere); "
                        "speed only, within float rounding")
    m.add_argument("--shape-buckets", default="",
                   help="model sizes WxH (multiples of 64, comma list) or 'auto' (16:9, 9:16, 4:3, 3:4, 1:1 at "
                        "--long-side): each clip is stretched to the nearest bucket, so --compile sees few shapes. "
                        "Changes the mattes (fingerprinted); '' keeps each clip's aspect")
    m.add_argument("--pad-batch", action="store_true",
                   help="pad a smaller last batch to --batch-size (one compiled batch shape per bucket)")
    m.add_argument("--compile-backend", choices=["inductor", "aot_eager", "eager"], default="inductor",
                   help="torch.compile backend (with --compile)")
    m.add_argument("--compile-cache", default="",
                   help="folder or fsspec URL shared by every actor and restart for compiled artefacts (with "
                        "--compile): a restarted actor loads them instead of compiling again")
    r = p.add_argument_group("cluster")
    r.add_argument("--address", default=None,
                   help="Ray address; default: the cluster of `ray job submit`/RAY_ADDRESS, else a new local one")
    r.add_argument("--num-actors", type=positive, default=None,
                   help="matter actors; default one per GPU, else --cpu-actors")
    r.add_argument("--cpu-actors", type=positive, default=1, help="matter actors when the cluster has no GPU")
    r.add_argument("--num-gpus", type=non_negative, default=None, help="local cluster only: GPUs to declare")
    r.add_argument("--num-cpus", type=positive, default=None, help="local cluster only: CPUs to declare")
    r.add_argument("--dashboard", action="store_true", help="local cluster only: start the Ray dashboard")
    r.add_argument("--read-ahead", type=positive, default=2, help="videos being read at once per actor")
    r.add_argument("--queue-depth", type=positive, default=2, help="batches queued per actor")
    r.add_argument("--max-restarts", type=non_negative, default=3,
                   help="restarts of a crashed actor (and retries of its batch), e.g. after a GPU error")
    r.add_argument("--writers", type=positive, default=None,
                   help="shard writer actors (default: one per 4 matter actors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


def _preset_note(name: str) -> str:
    """'(default: X; release: Y)' for a preset-covered flag, from MatterConfig and models.presets."""
    default = {f.name: f.default for f in dataclasses.fields(MatterConfig)}[name]
    release = MATTER_PRESETS["release"].get(name, default)
    default, release = ("none" if v is None else v for v in (default, release))
    return f"(default: {default}; release: {release})"


def _mask_threshold(text: str) -> int | None:
    """``--mask-threshold`` value: 'none' or an integer 0..254."""
    if text.lower() == "none":
        return None
    value = int(text)
    if not 0 <= value <= 254:
        raise argparse.ArgumentTypeError(f"must be 'none' or 0..254, got {value}")
    return value


#: matter flags whose default comes from --preset (their argparse default is SUPPRESS)
PRESET_FLAGS = ("dtype", "vae_dtype", "long_side", "resize", "resample", "mask_threshold", "alpha_8bit",
                "alpha_precision", "decode_chunk", "posterior")


def matter_config_from_args(args: argparse.Namespace) -> MatterConfig:
    """MatterConfig from the matter flags: the preset's values, then every flag given explicitly."""
    explicit = {name: getattr(args, name) for name in PRESET_FLAGS if hasattr(args, name)}
    return preset_config(getattr(args, "preset", "default"), checkpoint=args.checkpoint, base_model=args.base_model,
                         device=args.device, seed=args.seed, segment_len=args.segment_len,
                         batch_size=args.batch_size, compile=args.compile, compile_mode=args.compile_mode,
                         cudnn_benchmark=args.cudnn_benchmark, channels_last=args.channels_last,
                         pin_memory=args.pin_memory, fused_group_norm=args.fused_group_norm,
                         shape_buckets=args.shape_buckets, pad_batch=args.pad_batch,
                         compile_backend=args.compile_backend, compile_cache=args.compile_cache, **explicit)


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> JobConfig:
    if not 1 <= args.segment_len <= schema.MAX_SEGMENT_LEN:
        (parser or build_parser()).error(f"--segment-len must be in 1..{schema.MAX_SEGMENT_LEN}")
    matter = matter_config_from_args(args)
    resources = ResourceConfig(address=args.address, num_actors=args.num_actors, cpu_actors=args.cpu_actors,
                               num_gpus=args.num_gpus, num_cpus=args.num_cpus, dashboard=args.dashboard,
                               read_ahead=args.read_ahead, queue_depth=args.queue_depth,
                               max_restarts=args.max_restarts, writers=args.writers)
    return JobConfig(
        split=args.split, data_root=args.data_root, out=args.out, matter=args.matter, matter_config=matter,
        reader=ReaderConfig(masklets=args.masklets, segment_len=args.segment_len, backend=args.backend),
        resources=resources, videos_per_shard=args.videos_per_shard,
        shards=args.shards, retry_failed=args.retry_failed, redo_mismatched=args.redo_mismatched, replan=args.replan,
        verify_skipped=args.verify_skipped, max_matter_failures=args.max_matter_failures,
        lease_timeout_s=args.lease_timeout, limit_videos=args.limit_videos, frames=args.frames,
        progress=not args.no_progress)


def code_version() -> str:
    """The git commit of this code (with '-dirty'), else 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha or "unknown"


def write_run_json(cfg: JobConfig, result: JobResult, num_shards: int) -> str:
    """Write ``<out>/<split>/run.json`` atomically: this run first, earlier runs kept under 'history'."""
    out = SplitDir(cfg.out_split)
    history: list = []
    try:
        old = out.run_info()
    except UnreadableFile as exc:
        log.warning("the previous %s: starting a new history", exc)
        history = [{"unreadable_previous_run_json": exc.reason}]
    else:
        if old is not None:
            history = old.pop(schema.RUN_HISTORY, []) + [old]
    alive = [a["info"]["matter"] for a in result.actors if "matter" in a["info"]]
    matter = alive[0] if alive else {"name": cfg.matter}
    conf = dataclasses.asdict(cfg)
    conf["shards"] = sorted(cfg.shards) if cfg.shards else None
    doc = {
        schema.RUN_FINISHED_AT: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        schema.RUN_CODE_VERSION: code_version(), schema.RUN_CONFIG: conf, schema.RUN_MATTER: matter,
        schema.RUN_FINGERPRINT: result.fingerprint,
        schema.RUN_CHECKPOINT_SHA256: matter.get(schema.FP_WEIGHTS), schema.RUN_NUM_SHARDS: num_shards,
        schema.RUN_SUMMARY: result.summary(), schema.RUN_ERRORS: result.errors, schema.RUN_ACTORS: result.actors,
        schema.RUN_HISTORY: history[-schema.RUN_HISTORY_LEN:],
    }
    out.write_atomic(schema.RUN_JSON, json.dumps(doc, indent=1, default=str).encode())
    return out.url_of(schema.RUN_JSON)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args, parser)
    try:
        result, plans = run_job(cfg)
    except (JobError, FileNotFoundError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    path = write_run_json(cfg, result, len(plans))
    s = result.summary()
    print(f"shards: {s['shards_done']} done, {s['shards_skipped']} skipped, {len(s['shards_failed'])} failed "
          f"(of {len(plans)}); samples: {s['samples_ok']} ok, {sum(s['samples_failed'].values())} failed "
          f"{s['samples_failed'] or ''}")
    print(f"frames: {s['frames']} in {s['wall_s']} s ({s['frames_per_s']} frames/s); "
          f"actor utilisation {s['actor_utilisation']} (warm {s['actor_utilisation_warm']}); output {cfg.out_split}; run record {path}")
    for index, reason in sorted(result.shards_failed.items()):
        print(f"shard {index} FAILED: {reason}", file=sys.stderr)
    for err in result.errors:
        print(f"run FAILED: {err}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
