"""The MA-V job: plan the shards of a split, decide which to (re)do, and run them with the executor.

Data flow (modules in order): ``reader`` (SA-V video -> segments) -> ``matter_actor`` (segments ->
mattes) -> ``writer`` (encode, stream into shards); ``plan`` decides the shards, ``executor`` runs the
steps on Ray, ``run`` is the command line.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

from mava import schema
from mava.manifest import SplitDir
from models.base import MatterConfig
from pipeline import plan as planning
from pipeline.executor import Executor, ResourceConfig, ShardTask, Steps
from pipeline.matter_actor import MatterActor
from pipeline.reader import ReaderConfig, list_videos, read_video
from pipeline.writer import ShardWriter, encode

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    split: str
    data_root: str = "data"
    out: str = "out/mava"
    matter: str = "videomama"
    matter_config: MatterConfig = field(default_factory=MatterConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    videos_per_shard: int = 8
    shards: set[int] | None = None
    retry_failed: bool = False
    limit_videos: int | None = None
    frames: str = "jpg"               # jpg | none
    progress: bool = True

    @property
    def split_url(self) -> str:
        return f"{self.data_root.rstrip('/')}/{self.split}"

    @property
    def out_split(self) -> str:
        return f"{self.out.rstrip('/')}/{self.split}"

    @property
    def content_options(self) -> dict:
        """The options that change what a shard holds; recorded in its done marker."""
        return {"matter": self.matter, "masklets": self.reader.masklets, "segment_len": self.reader.segment_len,
                "frames": self.frames, "seed": self.matter_config.seed}


@dataclass
class JobResult:
    shards_done: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    shards_failed: dict[int, str] = field(default_factory=dict)
    ok: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    frames: int = 0
    wall_s: float = 0.0
    actors: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.shards_failed else 0

    def utilisation(self, warm: bool = False) -> float | None:
        """Fraction of the actors' time (from their first call) spent in the matter, not waiting."""
        first = sum(a["stats"].get("first_call_s", 0.0) for a in self.actors) if warm else 0.0
        busy = sum(a["stats"]["busy_s"] for a in self.actors) - first
        span = busy + sum(a["stats"]["idle_s"] for a in self.actors)
        return round(busy / span, 4) if span > 0 else None

    def summary(self) -> dict:
        return {
            "shards_done": len(self.shards_done), "shards_skipped": len(self.shards_skipped),
            "shards_failed": {str(k): v for k, v in self.shards_failed.items()},
            "samples_ok": self.ok, "samples_failed": dict(sorted(self.failed.items())),
            "frames": self.frames, "wall_s": round(self.wall_s, 2),
            "frames_per_s": round(self.frames / self.wall_s, 2) if self.wall_s else None,
            "actor_utilisation": self.utilisation(),
            "actor_utilisation_warm": self.utilisation(warm=True),
        }


def steps_for(cfg: JobConfig) -> Steps:
    """The job's steps with their configuration bound."""
    import functools

    return Steps(
        read=read_video, read_args=(cfg.reader,),
        matter=MatterActor, matter_args=(cfg.matter, cfg.matter_config),
        encode=encode, encode_args=(cfg.matter, cfg.frames),
        writer=functools.partial(ShardWriter, cfg.out_split, cfg.split),
        matter_name=cfg.matter,
    )


def run_job(cfg: JobConfig) -> tuple[JobResult, list[planning.ShardPlan]]:
    """Plan, select and run the shards of ``cfg``; returns the result and the full plan."""
    if not schema.is_safe_id(cfg.split):
        raise ValueError(f"unsafe split name {cfg.split!r}")
    out = SplitDir(cfg.out_split)
    videos = list_videos(cfg.split_url)
    if cfg.limit_videos is not None:
        videos = videos[:cfg.limit_videos]
    plans = planning.plan_shards(videos, cfg.videos_per_shard)
    removed = planning.clean_partials(out)
    if removed:
        log.info("removed %d partial files of an interrupted run", removed)
    stale = planning.stale_shards(out, cfg.split, len(plans)) if cfg.limit_videos is None else []
    if stale:
        raise ValueError(f"{cfg.out_split} holds shards past this plan's {len(plans)} ({stale[0]}, ...): it was "
                         f"written with another shard plan (--videos-per-shard?); use a new --out")
    todo, skipped = planning.select_shards(plans, out, cfg.split, shards=cfg.shards,
                                           retry_failed=cfg.retry_failed, options=cfg.content_options)
    log.info("%d videos in %d shards: %d to run, %d skipped", len(videos), len(plans), len(todo), len(skipped))
    result = JobResult(shards_skipped=[p.index for p in skipped])
    if todo:
        marker = {schema.MARKER_OPTIONS: cfg.content_options}
        tasks = [ShardTask(p.index, p.videos, {schema.MARKER_VIDEOS: [v.video_id for v in p.videos]} | marker)
                 for p in todo]
        ex = Executor(steps_for(cfg), cfg.resources, cfg.matter_config.batch_size, cfg.progress)
        run = ex.run(tasks)
        for index, res in sorted(run.done.items()):
            result.shards_done.append(index)
            result.ok += res.marker[schema.MARKER_OK]
            result.frames += res.marker[schema.MARKER_FRAMES]
            result.failed.update(res.failed)
        result.shards_failed = dict(sorted(run.failed.items()))
        result.wall_s, result.actors = run.wall_s, run.actors
    return result, plans
