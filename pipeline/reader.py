"""Read SA-V videos as segments: plan a video (validate, cut masklets), then stream its segments.

``list_videos(split) -> [VideoRef]``, ``plan_video(ref, cfg) -> VideoPlan`` (raises a SampleError for a
video-level failure), ``read_segments(plan, cfg)`` yields one SegmentData or Failure per planned
segment, decoding only the frames it needs, with a small cache shared by consecutive segments.
``read_video(ref, cfg)`` is the reader step of the job: the stream of one video (see its docstring).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Union

import numpy as np

from mava import schema
from pipeline import sav, video
from pipeline.errors import (
    AnnotationMalformed, AnnotationMissing, AnnotationOutOfRange, EmptyMasklet, Failure, ReaderError,
    RleSizeMismatch, SampleError, UnsafeId, VideoCorrupt,
)
from pipeline.sav import VideoRef, list_videos  # noqa: F401  (re-exported API)
from pipeline.segments import Segment, SegmentData, plan_masklet

log = logging.getLogger(__name__)

MASKLET_CHOICES = ("manual", "auto", "all")


@dataclass
class ReaderConfig:
    masklets: str = "manual"     # manual | auto | all
    segment_len: int = 12        # annotated frames per segment
    backend: str = "decord"      # decord | pyav
    threads: int = 1             # decoder threads per reader (Ray readers get one CPU each)


@dataclass
class VideoPlan:
    ref: VideoRef
    segments: list[Segment]      # in frame order (start, then key): one forward decode pass serves all masklets
    failures: list[Failure]      # masklet-level problems (key = sample_key(vid, src, mid, 0))
    height: int
    width: int
    num_frames: int
    fps_ratio: int = 4
    rles: dict[tuple[str, int], list[dict]] = field(default_factory=dict, repr=False)


def masklet_sources(cfg: ReaderConfig) -> tuple[str, ...]:
    if cfg.masklets not in MASKLET_CHOICES:
        raise ValueError(f"masklets must be one of {MASKLET_CHOICES}, got {cfg.masklets!r}")
    return schema.SOURCES if cfg.masklets == "all" else (cfg.masklets,)


def _fps_ratio(fps: float | None) -> int:
    if not fps or fps <= 0:
        return round(sav.VIDEO_FPS / sav.ANN_FPS)
    return max(1, round(fps / sav.ANN_FPS))


def _masklet_failure(vid: str, src: str, mid: int, err: SampleError) -> Failure:
    return Failure(schema.sample_key(vid, src, mid, 0), vid, src, mid, 0, err)


def plan_video(ref: VideoRef, cfg: ReaderConfig) -> VideoPlan:
    """Validate one video and cut its masklets into segments.

    Raises a SampleError subclass when nothing of the video can be read (unsafe id, missing or
    malformed JSON, missing or unopenable video, sizes that differ, annotations past the video end).
    """
    if not schema.is_safe_id(ref.video_id):
        raise UnsafeId(ref.id_source or str(ref.video_url), f"unsafe video id {ref.video_id!r}")
    sources = masklet_sources(cfg)
    if ref.layout == sav.LAYOUT_FRAMES:
        return _plan_frames_layout(ref, cfg, sources)
    anns = []
    for src in sources:
        url = ref.manual_url if src == "manual" else ref.auto_url
        if url is None:
            if cfg.masklets == "all" and src == "auto":
                continue  # auto files are optional when reading everything
            raise AnnotationMissing(str(ref.video_url), f"no {src} annotation file for {ref.video_id}")
        anns.append(sav.load_annotation(url, src, ref.video_id))
    dec = video.open_video(ref.video_url, cfg.backend, threads=cfg.threads)
    try:
        h, w, n, fps = dec.height, dec.width, dec.num_frames, dec.fps
    finally:
        dec.close()
    ratio = _fps_ratio(fps)
    segments: list[Segment] = []
    failures: list[Failure] = []
    rles: dict[tuple[str, int], list[dict]] = {}
    for ann in anns:
        if (ann.height, ann.width) != (h, w):
            raise RleSizeMismatch(ann.path, f"annotation size {ann.height}x{ann.width} differs from the "
                                            f"video size {h}x{w} ({ref.video_url})")
        _check_range(ann.path, ann.num_frames, ratio, n)
        size_errors = 0
        for j, mid in enumerate(ann.masklet_ids):
            try:
                areas = np.array([sav.check_rle(ann.rles[i][j], h, w, ann.path,
                                                f"masklet {mid} annotated frame {i}")
                                  for i in range(ann.num_frames)])
            except (RleSizeMismatch, AnnotationMalformed) as e:
                size_errors += isinstance(e, RleSizeMismatch)
                failures.append(_masklet_failure(ref.video_id, ann.source, mid, e))
                continue
            segs = plan_masklet(ref.video_id, ann.source, mid, areas > 0, cfg.segment_len, ratio)
            if not segs:
                failures.append(_masklet_failure(ref.video_id, ann.source, mid, EmptyMasklet(
                    ann.path, f"masklet {mid} is empty in all {ann.num_frames} annotated frames")))
                continue
            segments.extend(segs)
            rles[(ann.source, mid)] = [ann.rles[i][j] for i in range(ann.num_frames)]
        if ann.masklet_ids and size_errors == len(ann.masklet_ids):
            raise RleSizeMismatch(ann.path, f"every masklet's RLE size differs from the video size {h}x{w}")
    segments.sort(key=lambda s: (s.start, s.key))
    failures.sort(key=lambda f: f.key)
    return VideoPlan(ref, segments, failures, h, w, n, ratio, rles)


def _check_range(path: str, n_ann: int, ratio: int, n_frames: int) -> None:
    last = (n_ann - 1) * ratio
    if last >= n_frames:
        raise AnnotationOutOfRange(path, f"{n_ann} annotated frames need video frame {last}, "
                                         f"the video has {n_frames} frames")


_DIGITS = re.compile(r"^\d{1,9}$")


def _plan_frames_layout(ref: VideoRef, cfg: ReaderConfig, sources: tuple[str, ...]) -> VideoPlan:
    """Val/test layout: JPEG frame folder + per-object PNG masks named by video frame number."""
    from PIL import Image, UnidentifiedImageError

    if not sav.isdir(ref.mask_url):
        raise AnnotationMissing(ref.mask_url, "mask folder does not exist")
    dec = video.open_video(ref.video_url, cfg.backend)
    h, w, n = dec.height, dec.width, dec.num_frames
    dec.close()
    ratio = _fps_ratio(sav.VIDEO_FPS)
    if "manual" not in sources:
        log.info("%s: the frames layout has manual masks only; nothing for %s", ref.video_id, cfg.masklets)
        return VideoPlan(ref, [], [], h, w, n, ratio, {})
    objects: dict[int, dict[int, str]] = {}
    for name, typ in sav._ls(ref.mask_url):
        if typ != "directory":
            continue
        obj_url = sav.join(ref.mask_url, name)
        if not _DIGITS.match(name):
            raise AnnotationMalformed(obj_url, "object folder name is not a number")
        frames = {}
        for fname, ftyp in sav._ls(obj_url):
            stem = fname[:-4] if fname.lower().endswith(".png") else None
            if ftyp == "directory" or stem is None:
                continue
            if not _DIGITS.match(stem) or int(stem) % ratio:
                raise AnnotationMalformed(sav.join(obj_url, fname), f"mask name is not a multiple-of-{ratio} frame number")
            frames[int(stem) // ratio] = sav.join(obj_url, fname)
        objects[int(name)] = frames
    n_ann = max((max(f) + 1 for f in objects.values() if f), default=0)
    if n_ann:
        _check_range(ref.mask_url, n_ann, ratio, n)
    segments, failures, rles = [], [], {}
    empty = sav.encode_mask(np.zeros((h, w), dtype=bool))
    for mid, frames in sorted(objects.items()):
        seq, vis = [], []
        try:
            for i in range(n_ann):
                if i not in frames:
                    seq.append(empty)
                    vis.append(False)
                    continue
                fs, path = sav.url_fs(frames[i])
                try:
                    with fs.open(path, "rb") as f:
                        m = np.asarray(Image.open(f).convert("L")) > 0
                except (OSError, UnidentifiedImageError, SyntaxError) as e:
                    raise AnnotationMalformed(frames[i], f"cannot decode mask PNG: {e}") from e
                if m.shape != (h, w):
                    raise RleSizeMismatch(frames[i], f"mask size {m.shape[0]}x{m.shape[1]} differs from the video size {h}x{w}")
                seq.append(sav.encode_mask(m))
                vis.append(bool(m.any()))
        except (RleSizeMismatch, AnnotationMalformed) as e:
            failures.append(_masklet_failure(ref.video_id, "manual", mid, e))
            continue
        segs = plan_masklet(ref.video_id, "manual", mid, vis, cfg.segment_len, ratio)
        if not segs:
            failures.append(_masklet_failure(ref.video_id, "manual", mid, EmptyMasklet(
                sav.join(ref.mask_url, f"{mid:03d}"), f"masklet {mid} is empty in all {n_ann} annotated frames")))
            continue
        segments.extend(segs)
        rles[("manual", mid)] = seq
    segments.sort(key=lambda s: (s.start, s.key))
    failures.sort(key=lambda f: f.key)
    return VideoPlan(ref, segments, failures, h, w, n, ratio, rles)


class _FrameCache:
    """Decoded frames by video index, least recently used dropped beyond ``capacity``."""

    def __init__(self, dec: video.Decoder, capacity: int):
        self.dec, self.capacity = dec, max(1, capacity)
        self._d: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, indices: list[int]) -> np.ndarray:
        missing = [i for i in indices if i not in self._d]
        if missing:
            for i, arr in zip(missing, self.dec.get(missing)):
                self._d[i] = arr
        out = np.stack([self._d[i] for i in indices])
        for i in indices:
            self._d.move_to_end(i)
        while len(self._d) > max(self.capacity, len(indices)):
            self._d.popitem(last=False)
        return out


def read_segments(plan: VideoPlan, cfg: ReaderConfig) -> Iterator[SegmentData | Failure]:
    """One SegmentData (or Failure) per ``plan.segments`` entry, in order; memory ~ a few segments."""
    if not plan.segments:
        return
    vid = plan.ref.video_id
    try:
        dec = video.open_video(plan.ref.video_url, cfg.backend, threads=cfg.threads)
    except SampleError as e:
        for s in plan.segments:
            yield Failure(s.key, vid, s.source, s.masklet_id, s.start, e)
        return
    try:
        if (dec.height, dec.width) != (plan.height, plan.width):
            err = VideoCorrupt(str(plan.ref.video_url), f"size {dec.height}x{dec.width} differs from the plan")
            for s in plan.segments:
                yield Failure(s.key, vid, s.source, s.masklet_id, s.start, err)
            return
        cache = _FrameCache(dec, cfg.segment_len)
        for s in plan.segments:
            try:
                frames = cache.get(s.video_frames)
            except VideoCorrupt as e:
                yield Failure(s.key, vid, s.source, s.masklet_id, s.start, e)
                continue
            rles = plan.rles[(s.source, s.masklet_id)][s.start:s.start + s.length]
            masks = np.stack([sav.decode_rle(r) for r in rles])
            yield SegmentData(s, frames, masks, list(rles))
    finally:
        dec.close()


# --- the reader step of the job -------------------------------------------------------------------


@dataclass
class VideoHeader:
    """First item of a reader stream: the keys that follow, in order, and what already failed."""

    video_id: str
    keys: list[str]
    failures: list[Failure]


@dataclass(frozen=True)
class Next:
    """Announces that the next item of a reader stream is the SegmentData of ``key`` (small, so the
    driver can route failures and pixels apart without fetching pixels)."""

    key: str


StreamItem = Union[VideoHeader, Next, SegmentData, Failure]


def read_video(ref: VideoRef, cfg: ReaderConfig) -> Iterator[StreamItem]:
    """The stream of one video: a VideoHeader, then per planned key either a Failure or ``Next(key)``
    followed by its SegmentData.

    Never raises: typed input errors become failures, and so does anything unexpected (as
    ReaderError, logged with its traceback), so one bad video cannot fail its shard.
    """
    try:
        plan = plan_video(ref, cfg)
    except Exception as exc:  # noqa: BLE001 - recorded as this video's failed row
        err = exc if isinstance(exc, SampleError) else _unexpected(ref, exc)
        yield VideoHeader(ref.video_id, [], [Failure.of_video(ref.video_id, err)])
        return
    yield VideoHeader(ref.video_id, [s.key for s in plan.segments], list(plan.failures))
    done = 0
    try:
        for item in read_segments(plan, cfg):
            if isinstance(item, Failure):
                yield item
            else:
                yield Next(item.segment.key)
                yield item
            done += 1
    except Exception as exc:  # noqa: BLE001 - the rest of this video's samples fail, recorded
        err = _unexpected(ref, exc)
        for s in plan.segments[done:]:
            yield Failure(s.key, s.video_id, s.source, s.masklet_id, s.start, err)


def _unexpected(ref: VideoRef, exc: Exception) -> ReaderError:
    log.exception("unexpected error reading %s", ref.video_id)
    return ReaderError(str(getattr(ref, "video_url", None) or ref.video_id), f"{type(exc).__name__}: {exc}")
