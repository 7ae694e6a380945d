"""Read SA-V videos as segments: plan a video (validate, cut masklets), then stream its segments.

``list_videos(split) -> [VideoRef]``, ``open_plan(ref, cfg) -> (VideoPlan, open video)`` (raises an
InputError for a video-level failure), ``read_segments(plan, cfg, video)`` yields one SegmentData or
Failure per planned segment, decoding only the frames it needs, with a small cache shared by
consecutive segments. Each video is opened (and, behind a URL, fetched) once. ``read_video(ref, cfg)``
is the reader step of the job: the stream of one video (see its docstring).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from mava import schema
from models.options import int_at_least, int_in, output_option, runtime_option
from pipeline import sav, video
from pipeline.errors import (
    AnnotationMalformed, AnnotationMissing, AnnotationOutOfRange, EmptyMasklet, InputError, ReaderCrashed,
    ReaderError, RleSizeMismatch, UnsafeId, VideoCorrupt, VideoMissing,
)
from pipeline.protocol import Chunk, Failure, Stage, VideoHeader
from pipeline.sav import VideoRef, list_videos  # noqa: F401  (re-exported API)
from pipeline.segments import Segment, SegmentData, plan_masklet

log = logging.getLogger(__name__)

MASKLET_CHOICES = ("manual", "auto", "all")


@dataclass
class ReaderConfig:
    """How videos are read and cut; fields are classified like MatterConfig's (output or runtime), and
    each field's metadata is its ``python -m pipeline.run`` flag."""

    masklets: str = output_option("manual", "which masklets to matte", choices=MASKLET_CHOICES, group="io")
    segment_len: int = output_option(12, f"annotated frames per segment (1..{schema.MAX_SEGMENT_LEN})",
                                     parse=int_in(1, schema.MAX_SEGMENT_LEN), group="io")
    backend: str = runtime_option("decord", "video decoder (both decode the same frames)", choices=video.BACKENDS,
                                  group="io")
    threads: int = runtime_option(1, "decoder threads per reader (Ray readers get a fraction of a CPU each)",
                                  parse=int_at_least(1), group="io")
    chunk: int = runtime_option(8, "segments per reader chunk: the unit the driver routes to a matter actor "
                                   "(the driver's work is per chunk, not per segment; at least --batch-size)",
                                parse=int_at_least(1), group="io")
    stride: int = output_option(0, "annotated frames between window starts; 0 = --segment-len (windows tile, the "
                                   "last shifted back); smaller overlaps every window with the previous, so "
                                   "shared frames are matted twice (QC overlap_mad), at more compute",
                                parse=int_at_least(0), omit_default=True, group="io")

    def __post_init__(self):
        if self.stride == self.segment_len:  # the same tiling as the default: one fingerprint for both
            self.stride = 0
        if self.stride < 0 or self.stride > self.segment_len:
            raise ValueError(f"stride must be in 0..segment_len ({self.segment_len}), got {self.stride}")


@dataclass
class VideoPlan:
    ref: VideoRef
    segments: list[Segment]      # in frame order (start, then key): one forward decode pass serves all masklets
    failures: list[Failure]      # masklet-level problems (key = sample_key(vid, src, mid, 0))
    height: int                  # of the frames read_segments returns (after ``rotation``)
    width: int
    num_frames: int | None       # None only in plans made from annotations alone (cost model), when undeclared
    fps_ratio: int = 4
    rles: dict[tuple[str, int], list[dict]] = field(default_factory=dict, repr=False)
    rotation: int = 0            # clockwise degrees applied to the coded pictures to give the frames
    display_rotation: int = 0    # the container's display rotation (clockwise degrees)


@dataclass(frozen=True)
class VideoFacts:
    """What planning needs to know about a video: measured by the decoder (reader) or declared by the
    annotation JSON (cost model)."""

    url: str
    height: int                  # frame size in the orientation the frames will be read in
    width: int
    num_frames: int | None       # None: unknown, annotated frames are not range-checked
    fps_ratio: int
    rotation: int = 0            # as VideoPlan.rotation / display_rotation
    display_rotation: int = 0

    def size_mismatch(self, path: str, height: int, width: int) -> RleSizeMismatch:
        """The error for an annotation file whose declared size fits neither orientation of the video."""
        msg = f"annotation size {height}x{width} differs from the video size {self.height}x{self.width} ({self.url})"
        if self.display_rotation:
            coded = video.rotated_size(self.height, self.width, -self.rotation)
            shown = video.rotated_size(*coded, self.display_rotation)
            msg += (f"; the container's display rotation is {self.display_rotation} degrees and the annotation "
                    f"matches neither the displayed {shown[0]}x{shown[1]} nor the coded {coded[0]}x{coded[1]} pictures")
        return RleSizeMismatch(path, msg)


@dataclass
class MaskletPlan:
    """One masklet planned: its segments and per-annotated-frame RLEs, or the error that fails it."""

    source: str
    masklet_id: int
    segments: list[Segment]
    rles: list[dict]
    error: InputError | None = None


def masklet_sources(cfg: ReaderConfig) -> tuple[str, ...]:
    if cfg.masklets not in MASKLET_CHOICES:
        raise ValueError(f"masklets must be one of {MASKLET_CHOICES}, got {cfg.masklets!r}")
    return schema.SOURCES if cfg.masklets == "all" else (cfg.masklets,)


def _fps_ratio(fps: float | None) -> int:
    if not fps or fps <= 0:
        return round(sav.VIDEO_FPS / sav.ANN_FPS)
    return max(1, round(fps / sav.ANN_FPS))


def plan_one_masklet(video_id: str, source: str, masklet_id: int, num_ann: int,
                     frame: Callable[[int], tuple[dict, bool]], where: str, segment_len: int,
                     fps_ratio: int, stride: int = 0) -> MaskletPlan:
    """The per-masklet planning step of both layouts and the cost model.

    Reads every annotated frame's mask through ``frame(i) -> (rle, visible)`` (which raises
    RleSizeMismatch or AnnotationMalformed for a bad mask: that fails this masklet only), tiles the
    visible span with windows, and fails a masklet that is never visible with EmptyMasklet (``where``
    names its file or folder).
    """
    rles, visible = [], []
    try:
        for i in range(num_ann):
            rle, vis = frame(i)
            rles.append(rle)
            visible.append(vis)
    except (RleSizeMismatch, AnnotationMalformed) as e:
        return MaskletPlan(source, masklet_id, [], [], e)
    segs = plan_masklet(video_id, source, masklet_id, visible, segment_len, fps_ratio, stride)
    if not segs:
        return MaskletPlan(source, masklet_id, [], [], EmptyMasklet(
            where, f"masklet {masklet_id} is empty in all {num_ann} annotated frames"))
    return MaskletPlan(source, masklet_id, segs, rles)


def plan_annotation(ann: sav.Annotation, facts: VideoFacts, segment_len: int, stride: int = 0) -> list[MaskletPlan]:
    """Plan every masklet of one annotation file against a video described by ``facts``.

    Raises (failing the whole video) RleSizeMismatch when the file's size differs from the video's
    or when every masklet's RLE size differs, AnnotationOutOfRange when annotated frames map past
    the video's last frame.
    """
    h, w = facts.height, facts.width
    if (ann.height, ann.width) != (h, w):
        raise facts.size_mismatch(ann.path, ann.height, ann.width)
    if facts.num_frames is not None:
        _check_range(ann.path, ann.num_frames, facts.fps_ratio, facts.num_frames)

    def frame(j: int, mid: int) -> Callable[[int], tuple[dict, bool]]:
        def read(i: int) -> tuple[dict, bool]:
            rle = ann.rles[i][j]
            return rle, sav.check_rle(rle, h, w, ann.path, f"masklet {mid} annotated frame {i}") > 0
        return read

    plans = [plan_one_masklet(ann.video_id, ann.source, mid, ann.num_frames, frame(j, mid), ann.path,
                              segment_len, facts.fps_ratio, stride)
             for j, mid in enumerate(ann.masklet_ids)]
    size_errors = sum(isinstance(p.error, RleSizeMismatch) for p in plans)
    if ann.masklet_ids and size_errors == len(ann.masklet_ids):
        raise RleSizeMismatch(ann.path, f"every masklet's RLE size differs from the video size {h}x{w}")
    return plans


def _assemble(ref: VideoRef, plans: list[MaskletPlan], facts: VideoFacts) -> VideoPlan:
    segments: list[Segment] = []
    failures: list[Failure] = []
    rles: dict[tuple[str, int], list[dict]] = {}
    for p in plans:
        if p.error is not None:
            failures.append(Failure.of_masklet(ref.video_id, p.source, p.masklet_id, p.error))
            continue
        segments.extend(p.segments)
        rles[(p.source, p.masklet_id)] = p.rles
    segments.sort(key=lambda s: (s.start, s.key))
    failures.sort(key=lambda f: f.key)
    return VideoPlan(ref, segments, failures, facts.height, facts.width, facts.num_frames, facts.fps_ratio, rles,
                     facts.rotation, facts.display_rotation)


def _load_annotations(ref: VideoRef, cfg: ReaderConfig) -> list[sav.Annotation]:
    """The selected annotation files of a train-layout video (``auto`` is optional with ``all``)."""
    anns = []
    for src in masklet_sources(cfg):
        url = ref.manual_url if src == "manual" else ref.auto_url
        if url is None:
            if cfg.masklets == "all" and src == "auto":
                continue  # auto files are optional when reading everything
            raise AnnotationMissing(str(ref.video_url), f"no {src} annotation file for {ref.video_id}")
        anns.append(sav.load_annotation(url, src, ref.video_id))
    return anns


def _check_id(ref: VideoRef) -> None:
    if not schema.is_safe_id(ref.video_id):
        raise UnsafeId(ref.id_source or str(ref.video_url), f"unsafe video id {ref.video_id!r}")


def _plan_train(ref: VideoRef, anns: list[sav.Annotation], facts: VideoFacts, segment_len: int,
                stride: int = 0) -> VideoPlan:
    plans: list[MaskletPlan] = []
    for ann in anns:
        plans.extend(plan_annotation(ann, facts, segment_len, stride))
    return _assemble(ref, plans, facts)


def plan_video(ref: VideoRef, cfg: ReaderConfig) -> VideoPlan:
    """Validate one video and cut its masklets into segments (see :func:`open_plan`; the video is
    closed again)."""
    plan, dec = open_plan(ref, cfg)
    dec.close()
    return plan


def open_plan(ref: VideoRef, cfg: ReaderConfig) -> tuple[VideoPlan, video.Decoder]:
    """Validate one video, cut its masklets into segments, and return the plan with the open video,
    ready for :func:`read_segments` (one open per video: a remote mp4 is fetched once). The caller
    closes the decoder.

    Raises an InputError subclass when nothing of the video can be read (unsafe id, missing or
    malformed JSON, missing or unopenable video, sizes that differ, annotations past the video end).

    A rotated mp4 (display matrix or ``rotate`` tag) is read display-oriented when the annotation
    size matches the displayed frames (always for 180 degrees), as coded when it matches the coded
    pictures; ``plan.rotation`` says which, ``plan.display_rotation`` what the container asks for.
    """
    _check_id(ref)
    sources = masklet_sources(cfg)
    if ref.layout == sav.LAYOUT_FRAMES:
        return _plan_frames_layout(ref, cfg, sources)
    anns = _load_annotations(ref, cfg)
    dec = video.open_video(ref.video_url, cfg.backend, threads=cfg.threads)
    try:
        return _plan_opened(ref, anns, dec, cfg), dec
    except BaseException:
        dec.close()
        raise


def _plan_opened(ref: VideoRef, anns: list[sav.Annotation], dec: video.Decoder, cfg: ReaderConfig) -> VideoPlan:
    h, w, n, fps, shown = dec.height, dec.width, dec.num_frames, dec.fps, dec.display_rotation
    rotation = shown
    size = (anns[0].height, anns[0].width)
    if shown % 180 and size != (h, w) and size == (w, h):
        log.warning("%s: the annotation matches the coded %dx%d pictures, not the %d-degree display rotation; "
                    "reading the coded pictures", ref.video_id, w, h, shown)
        h, w, rotation = w, h, 0
    facts = VideoFacts(str(ref.video_url), h, w, n, _fps_ratio(fps), rotation, shown)
    return _plan_train(ref, anns, facts, cfg.segment_len, cfg.stride)


def plan_from_annotations(ref: VideoRef, cfg: ReaderConfig) -> VideoPlan:
    """What :func:`plan_video` plans for a train-layout video, from its annotation JSON alone.

    The cost model's plan: it opens no video. The video's size, frame count and fps are the ones
    the (first selected) JSON declares (``video_height``/``video_width``, ``video_frame_count``,
    ``video_frame_count / video_duration``) and the video file is only checked to exist. So it
    differs from :func:`plan_video` only for a video that cannot be opened or decoded, or whose real
    size, frame count or fps differs from what its JSON declares (then the reader fails the video
    or reads it in another orientation; here it is planned as declared).
    """
    _check_id(ref)
    if ref.layout != sav.LAYOUT_TRAIN:
        raise ValueError(f"{ref.video_id}: planning from annotations alone needs the train layout (mp4 + JSON)")
    anns = _load_annotations(ref, cfg)
    if not sav.exists(ref.video_url):
        raise VideoMissing(str(ref.video_url), "video does not exist")
    first = anns[0]
    facts = VideoFacts(str(ref.video_url), first.height, first.width, first.frame_count, _fps_ratio(first.fps))
    return _plan_train(ref, anns, facts, cfg.segment_len, cfg.stride)


def _check_range(path: str, n_ann: int, ratio: int, n_frames: int) -> None:
    last = (n_ann - 1) * ratio
    if last >= n_frames:
        raise AnnotationOutOfRange(path, f"{n_ann} annotated frames need video frame {last}, "
                                         f"the video has {n_frames} frames")


_DIGITS = re.compile(r"^\d{1,9}$")


def _png_mask(frames: dict[int, str], empty: dict, h: int, w: int) -> Callable[[int], tuple[dict, bool]]:
    """``frame(i)`` of one frames-layout object: its PNG mask of annotated frame i as an RLE."""
    from PIL import Image, UnidentifiedImageError

    def read(i: int) -> tuple[dict, bool]:
        if i not in frames:
            return empty, False
        fs, path = sav.url_fs(frames[i])
        try:
            with fs.open(path, "rb") as f:
                m = np.asarray(Image.open(f).convert("L")) > 0
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise AnnotationMalformed(frames[i], f"cannot decode mask PNG: {e}") from e
        if m.shape != (h, w):
            raise RleSizeMismatch(frames[i], f"mask size {m.shape[0]}x{m.shape[1]} differs from the video size {h}x{w}")
        return sav.encode_mask(m), bool(m.any())
    return read


def _plan_frames_layout(ref: VideoRef, cfg: ReaderConfig, sources: tuple[str, ...]
                        ) -> tuple[VideoPlan, video.Decoder]:
    """Val/test layout: JPEG frame folder + per-object PNG masks named by video frame number."""
    if not sav.isdir(ref.mask_url):
        raise AnnotationMissing(ref.mask_url, "mask folder does not exist")
    dec = video.open_video(ref.video_url, cfg.backend)
    try:
        return _plan_frames_opened(ref, cfg, sources, dec), dec
    except BaseException:
        dec.close()
        raise


def _plan_frames_opened(ref: VideoRef, cfg: ReaderConfig, sources: tuple[str, ...], dec: video.Decoder
                        ) -> VideoPlan:
    h, w, n = dec.height, dec.width, dec.num_frames
    ratio = _fps_ratio(sav.VIDEO_FPS)
    facts = VideoFacts(str(ref.video_url), h, w, n, ratio)
    if "manual" not in sources:
        log.info("%s: the frames layout has manual masks only; nothing for %s", ref.video_id, cfg.masklets)
        return _assemble(ref, [], facts)
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
    empty = sav.encode_mask(np.zeros((h, w), dtype=bool))
    plans = [plan_one_masklet(ref.video_id, "manual", mid, n_ann, _png_mask(frames, empty, h, w),
                              sav.join(ref.mask_url, f"{mid:03d}"), cfg.segment_len, ratio, cfg.stride)
             for mid, frames in sorted(objects.items())]
    return _assemble(ref, plans, facts)


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


def read_segments(plan: VideoPlan, cfg: ReaderConfig, dec: video.Decoder | None = None, skip: int = 0
                  ) -> Iterator[SegmentData | Failure]:
    """One SegmentData (or Failure) per ``plan.segments`` entry from index ``skip`` on, in order, decoding
    only the frames they need (memory: a few segments). ``dec`` is the video :func:`open_plan` left open
    (it is closed here); without it the video is opened again."""
    segments = plan.segments[skip:]
    if not segments:
        if dec is not None:
            dec.close()
        return
    if dec is None:
        try:
            dec = video.open_video(plan.ref.video_url, cfg.backend, threads=cfg.threads, rotation=plan.rotation)
        except InputError as e:
            for s in segments:
                yield Failure.of_segment(s, e, Stage.READ)
            return
    else:
        dec.set_rotation(plan.rotation)
    try:
        if (dec.height, dec.width) != (plan.height, plan.width):
            err = VideoCorrupt(str(plan.ref.video_url), f"size {dec.height}x{dec.width} differs from the plan")
            for s in segments:
                yield Failure.of_segment(s, err, Stage.READ)
            return
        cache = _FrameCache(dec, cfg.segment_len)
        # recorded in the sample metadata only when the video is rotated (older samples stay valid)
        facts = {k: v for k, v in ((schema.META_ROTATION, plan.rotation),
                                   (schema.META_DISPLAY_ROTATION, plan.display_rotation)) if v}
        for s in segments:
            try:
                frames = cache.get(s.video_frames)
            except VideoCorrupt as e:
                yield Failure.of_segment(s, e, Stage.READ)
                continue
            rles = plan.rles[(s.source, s.masklet_id)][s.start:s.start + s.length]
            masks = np.stack([sav.decode_rle(r) for r in rles])
            yield SegmentData(s, frames, masks, list(rles), dict(facts))
    finally:
        dec.close()


# --- the reader step of the job -------------------------------------------------------------------


def read_video(ref: VideoRef, cfg: ReaderConfig, start_chunk: int = 0) -> Iterator[VideoHeader | Chunk]:
    """The stream of one video (see ``pipeline.protocol``): a VideoHeader with the planned keys, then
    one Chunk per ``cfg.chunk`` consecutive keys, from chunk ``start_chunk`` on (a resumed stream).

    Never raises: typed input errors become failures, and so does anything unexpected (as
    ReaderError, logged with its traceback), so one bad video cannot fail its shard.
    """
    try:
        plan, dec = open_plan(ref, cfg)
    except Exception as exc:  # noqa: BLE001 - recorded as this video's failed row
        err = exc if isinstance(exc, InputError) else _unexpected(ref, exc)
        yield VideoHeader(ref.video_id, [], [Failure.of_video(ref.video_id, err)], cfg.chunk)
        return
    yield VideoHeader(ref.video_id, [s.key for s in plan.segments], list(plan.failures), cfg.chunk)
    skip = start_chunk * cfg.chunk
    items: list[SegmentData | Failure] = []
    try:
        for item in read_segments(plan, cfg, dec, skip):
            items.append(item)
            if len(items) == cfg.chunk:
                yield Chunk(ref.video_id, items)
                skip, items = skip + len(items), []
    except Exception as exc:  # noqa: BLE001 - the rest of this video's samples fail, recorded
        err = _unexpected(ref, exc)
        items += [Failure.of_segment(s, err, Stage.READ) for s in plan.segments[skip + len(items):]]
    for i in range(0, len(items), cfg.chunk):
        yield Chunk(ref.video_id, items[i:i + cfg.chunk])


def lost_keys(video_id: str, keys: Sequence[str] | None, reason: str, raised: BaseException | None = None
              ) -> list[Failure]:
    """Failures of the keys of a video whose reader process died on them every time it was retried
    (a decoder that crashes on this video is a problem of the sample, not of the machine); ``keys``
    None: the reader died before it planned the video (one row for the whole video). ``raised``: the
    reader raised this instead (a ReaderError, as ``read_video`` records an unexpected error)."""
    err = ReaderCrashed(video_id, reason) if raised is None else ReaderError(video_id, reason)
    keys = [schema.video_failure_key(video_id)] if keys is None else keys
    return [Failure(k, video_id, err.error_type, str(err), Stage.READ) for k in keys]


def _unexpected(ref: VideoRef, exc: Exception) -> ReaderError:
    log.exception("unexpected error reading %s", ref.video_id)
    return ReaderError(str(getattr(ref, "video_url", None) or ref.video_id), f"{type(exc).__name__}: {exc}")
