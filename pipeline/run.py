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

from mava import lifecycle, schema
from mava.folder import SplitDir, UnreadableFile
from mava.lifecycle import OneLineParser
from models.base import MatterConfig
from models.options import add_flags, from_args
from models.presets import MATTER_PRESETS, describe_preset, preset_config
from pipeline.executor import ResourceConfig
from pipeline.job import JobConfig, JobError, JobResult, run_job
from pipeline.reader import ReaderConfig

log = logging.getLogger("pipeline.run")


EXIT_CODES = lifecycle.exit_codes(
    "a shard could not be completed, or the run stalled, each named on stderr (per-sample failures are manifest "
    "rows, not exit 1): rerun the same command",
    "bad arguments, an unwritable --out, an empty split; and refusals before any work: another run holds the "
    "lease, finished shards of another fingerprint or plan, an unreachable cluster, matter actors that cannot "
    "start")

#: matter flags whose default comes from --preset (their argparse default is SUPPRESS)
PRESET_FLAGS = ("dtype", "vae_dtype", "long_side", "resize", "resample", "mask_threshold", "alpha_8bit",
                "alpha_precision", "decode_chunk", "posterior")


def _preset_note(name: str) -> str:
    """'(default: X; release: Y)' for a preset-covered flag, from MatterConfig and models.presets."""
    default = {f.name: f.default for f in dataclasses.fields(MatterConfig)}[name]
    release = MATTER_PRESETS["release"].get(name, default)
    default, release = ("none" if v is None else v for v in (default, release))
    return f"(default: {default}; release: {release})"


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The flags of JobConfig, ReaderConfig, MatterConfig and ResourceConfig, from their fields' metadata."""
    p = OneLineParser(
        prog="python -m pipeline.run",
        description="Matte every masklet of an SA-V split and write MA-V: WebDataset shards, a parquet "
                    "manifest and a done marker per shard under <out>/<split>/. Reruns skip finished shards.",
        epilog=EXIT_CODES, formatter_class=_Formatter)
    groups = {"io": p.add_argument_group("input and output"), "shards": p.add_argument_group("shards"),
              "matter": p.add_argument_group("matter"), "cluster": p.add_argument_group("cluster")}
    add_flags(p, JobConfig, groups=groups)
    add_flags(p, ReaderConfig, groups=groups)
    m = groups["matter"]
    m.add_argument("--preset", choices=sorted(MATTER_PRESETS), default="default",
                   help="videomama option set. 'release' reproduces the official VideoMaMa inference CLI "
                        f"({describe_preset('release')}): clips stretched to 1024x576 with PIL, mask "
                        "re-thresholded at 127, fp16 UNet and VAE, alpha truncated to 8 bits. 'default': aspect "
                        "kept, soft masks, bf16 on GPU, rounding. Flags given explicitly override the preset; "
                        "see README 'Release parity'")
    m.add_argument("--matter-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="an option of a custom matter (repeatable), e.g. --matter-option delay=0.5")
    add_flags(m, MatterConfig, suppress={n: _preset_note(n) for n in PRESET_FLAGS})
    add_flags(groups["cluster"], ResourceConfig)
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the epilog as written."""


def matter_config_from_args(args: argparse.Namespace) -> MatterConfig:
    """MatterConfig from the matter flags: the preset's values, then every flag given explicitly."""
    given = from_args(MatterConfig, args, extra=dict(getattr(args, "matter_option", [])))
    explicit = {f.name: getattr(given, f.name) for f in dataclasses.fields(MatterConfig)
                if f.name not in PRESET_FLAGS or hasattr(args, f.name)}
    return preset_config(getattr(args, "preset", "default"), **explicit)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """The JobConfig the flags describe."""
    return from_args(JobConfig, args, matter_config=matter_config_from_args(args),
                     reader=from_args(ReaderConfig, args), resources=from_args(ResourceConfig, args))


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
    try:
        cfg = config_from_args(args)
    except ValueError as exc:  # options that do not fit together, e.g. --stride past --segment-len
        parser.error(str(exc))
    try:
        result, plans = run_job(cfg)
    except JobError as exc:
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
    sys.exit(lifecycle.run_main(main))
