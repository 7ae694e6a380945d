"""SA-V input: list the videos of a split, parse masklet JSON defensively, validate and decode RLEs.

Everything goes through fsspec, so a split may be a local path or any fsspec URL.

Layouts
-------
train: ``<split>/[sav_NNN/]<vid>.mp4`` with ``<vid>_manual.json`` and (usually) ``<vid>_auto.json``
beside it; files may sit directly in the split folder or one level down.
val/test: ``<split>/JPEGImages_24fps/<vid>/%05d.jpg``, ``<split>/Annotations_6fps/<vid>/<obj:03d>/%05d.png``
(PNG names are *video* frame numbers, as the JPEG names) and the id list ``<split>/<split name>.txt``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
from pycocotools import mask as mask_utils

from mava import schema
from mava.folder import is_local_fs
from mava.sample import decode_rle  # noqa: F401  (the one RLE decoder, re-exported for the reader)
from pipeline.errors import AnnotationMalformed, AnnotationMissing, RleSizeMismatch, UnsafeId

log = logging.getLogger(__name__)

ANN_FPS = 6.0          # SA-V annotations are 6 fps
VIDEO_FPS = 24.0       # SA-V videos / frame folders are 24 fps
FRAMES_DIR = "JPEGImages_24fps"
MASKS_DIR = "Annotations_6fps"
LAYOUT_TRAIN = "train"
LAYOUT_FRAMES = "frames"
MANUAL_SUFFIX = "_manual.json"
AUTO_SUFFIX = "_auto.json"


# --- fsspec helpers -------------------------------------------------------------------------------


def join(url: str, *parts: str) -> str:
    """Join URL/path components with '/' (fsspec URLs and POSIX paths alike)."""
    out = url.rstrip("/")
    for p in parts:
        out = f"{out}/{p}"
    return out


def url_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the protocol-less path of ``url``."""
    return fsspec.core.url_to_fs(url)


def is_local(url: str) -> bool:
    return is_local_fs(url_fs(url)[0])


def _ls(url: str) -> list[tuple[str, str]]:
    """(basename, type) of the entries of a folder; [] when it does not exist."""
    fs, path = url_fs(url)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for e in entries:
        name = posixpath.basename(str(e["name"]).rstrip("/"))
        if name and name not in (".", ".."):
            out.append((name, e.get("type", "file")))
    return sorted(out)


def exists(url: str) -> bool:
    fs, path = url_fs(url)
    return fs.exists(path)


def isdir(url: str) -> bool:
    fs, path = url_fs(url)
    return fs.isdir(path)


# --- split listing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoRef:
    """One video of a split: small and picklable.

    Unsafe ids are kept (so the run can record a failure) but then carry no derived URLs.
    """

    video_id: str
    layout: str                      # "train" (mp4 + JSON) | "frames" (JPEG folder + PNG masks)
    video_url: str | None            # mp4 file or JPEG frame folder
    manual_url: str | None           # train: <vid>_manual.json (may not exist)
    auto_url: str | None = None      # train: <vid>_auto.json when present
    mask_url: str | None = None      # frames layout: Annotations_6fps/<vid>
    id_source: str = ""              # the file or list the id came from (named in UnsafeId)


def list_videos(split_url: str) -> list[VideoRef]:
    """All videos of a split, sorted by video_id; the layout is detected from the folder."""
    entries = _ls(split_url)
    if not entries:
        fs, path = url_fs(split_url)
        if not fs.exists(path):
            raise FileNotFoundError(f"split folder does not exist: {split_url}")
    names = {n for n, t in entries if t == "directory"}
    if FRAMES_DIR in names:
        refs = _list_frames_layout(split_url)
    else:
        refs = _list_train_layout(split_url, entries)
    return sorted(refs, key=lambda r: r.video_id)


LIST_THREADS = 16  # folders listed at once (SA-V train: 51 folders of ~1000 videos; on object stores a listing
                  # is a round trip per 1000 names)


def _list_train_layout(split_url: str, entries: list[tuple[str, str]]) -> list[VideoRef]:
    subs = [name for name, typ in entries if typ == "directory"]
    if len(subs) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(LIST_THREADS, len(subs))) as pool:
            listed = list(pool.map(lambda name: _ls(join(split_url, name)), subs))
    else:
        listed = [_ls(join(split_url, name)) for name in subs]
    folders = [("", entries), *zip(subs, listed)]
    found: dict[str, dict[str, str]] = {}
    where: dict[str, str] = {}
    for sub, items in folders:
        base = join(split_url, sub) if sub else split_url
        per: dict[str, dict[str, str]] = {}
        for name, typ in items:
            if typ == "directory":
                continue
            for suffix, kind in ((".mp4", "video"), (MANUAL_SUFFIX, "manual"), (AUTO_SUFFIX, "auto")):
                if name.endswith(suffix) and len(name) > len(suffix):
                    per.setdefault(name[: -len(suffix)], {})[kind] = join(base, name)
                    break
        for vid, files in per.items():
            if vid in found:
                log.warning("video %s appears in %s and %s; keeping the first", vid, where[vid], base)
                continue
            found[vid] = files
            where[vid] = base
    refs = []
    for vid, files in found.items():
        base = where[vid]
        refs.append(VideoRef(
            video_id=vid,
            layout=LAYOUT_TRAIN,
            video_url=files.get("video", join(base, f"{vid}.mp4")),
            manual_url=files.get("manual", join(base, f"{vid}{MANUAL_SUFFIX}")),
            auto_url=files.get("auto"),
            id_source=files.get("video") or files.get("manual") or files.get("auto") or base,
        ))
    return refs


def _list_frames_layout(split_url: str) -> list[VideoRef]:
    split_name = posixpath.basename(split_url.rstrip("/"))
    list_url = join(split_url, f"{split_name}.txt")
    if exists(list_url):
        fs, path = url_fs(list_url)
        try:
            with fs.open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise AnnotationMalformed(list_url, f"video list is not UTF-8 text: {e}") from e
        ids = [line.strip() for line in text.splitlines() if line.strip()]
        source = list_url
    else:
        ids = [n for n, t in _ls(join(split_url, FRAMES_DIR)) if t == "directory"]
        source = join(split_url, FRAMES_DIR)
    refs = []
    for vid in dict.fromkeys(ids):  # dedupe, keep order
        if schema.is_safe_id(vid):
            refs.append(VideoRef(vid, LAYOUT_FRAMES, join(split_url, FRAMES_DIR, vid), None, None,
                                 join(split_url, MASKS_DIR, vid), source))
        else:
            refs.append(VideoRef(vid, LAYOUT_FRAMES, None, None, None, None, source))
    return refs


# --- RLE ------------------------------------------------------------------------------------------


def rle_counts(counts: str) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string (vectorised inverse of pycocotools' encoding).

    Raises ValueError on characters outside the alphabet or a truncated last value.
    """
    c = np.frombuffer(counts.encode("ascii", errors="replace"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("character outside the RLE alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("truncated RLE string")
    ends = ~more
    group = np.concatenate([[0], np.cumsum(ends)[:-1]])       # value index of each char
    starts = np.concatenate([[0], np.flatnonzero(ends)[:-1] + 1])
    k = np.arange(c.size) - starts[group]                      # position inside the value
    if k.max() > 10:
        raise ValueError("RLE value too long")
    x = np.zeros(int(ends.sum()), dtype=np.int64)
    np.add.at(x, group, (c & 0x1F) << (5 * k))
    last = c[ends]
    nbits = 5 * (k[ends] + 1)
    neg = (last & 0x10) != 0
    x[neg] -= np.left_shift(np.int64(1), nbits[neg])
    # pycocotools: counts[m] += counts[m-2] for m > 2 (counts[0..2] are stored as is)
    cnts = x.copy()
    cnts[2::2] = np.cumsum(x[2::2])
    cnts[1::2] = np.cumsum(x[1::2])
    return cnts


def check_rle(rle: Any, height: int, width: int, path: str, where: str) -> int:
    """Validate one RLE against the frame size; return its area (pixels set).

    Raises RleSizeMismatch when ``size`` differs from (height, width), AnnotationMalformed otherwise.
    Validating before decoding matters: pycocotools writes past its buffer on bad run lengths.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise AnnotationMalformed(path, f"{where}: RLE is not an object with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise AnnotationMalformed(path, f"{where}: RLE size {size!r} is not [H, W]")
    h, w = (_as_int(v, path, f"{where}: RLE size") for v in size)
    if (h, w) != (height, width):
        raise RleSizeMismatch(path, f"{where}: RLE size {h}x{w} differs from the video size {height}x{width}")
    counts = rle["counts"]
    if not isinstance(counts, str):
        raise AnnotationMalformed(path, f"{where}: RLE counts is {type(counts).__name__}, not a string")
    try:
        cnts = rle_counts(counts)
    except ValueError as e:
        raise AnnotationMalformed(path, f"{where}: bad RLE counts ({e})") from e
    if cnts.size and cnts.min() < 0:
        raise AnnotationMalformed(path, f"{where}: negative RLE run length")
    total = int(cnts.sum())
    if total != h * w:
        raise AnnotationMalformed(path, f"{where}: RLE covers {total} pixels, the frame has {h * w}")
    return int(cnts[1::2].sum())


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed COCO RLE ``{"size": [H, W], "counts": str}`` of a 2-D boolean mask."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


# --- JSON -----------------------------------------------------------------------------------------


@dataclass
class Annotation:
    """A parsed masklet JSON: ``rles[annotated_frame][object]``, object j has id ``masklet_ids[j]``."""

    path: str
    source: str                      # manual | auto
    video_id: str
    height: int
    width: int
    masklet_ids: list[int]
    rles: list[list[dict]]
    fps: float | None = None         # video fps from video_frame_count / video_duration
    first_appeared: list[int | None] = field(default_factory=list)  # annotated frame index
    frame_count: int | None = None   # declared video frames (video_frame_count), when a whole number

    @property
    def num_frames(self) -> int:
        return len(self.rles)


def _as_int(v: Any, path: str, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AnnotationMalformed(path, f"{what} is {v!r}, not a number")
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        raise AnnotationMalformed(path, f"{what} is {v!r}, not a whole number")
    return int(v)


def _opt_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def read_json(url: str) -> Any:
    """Load a JSON file through fsspec; AnnotationMissing / AnnotationMalformed on failure."""
    fs, path = url_fs(url)
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise AnnotationMissing(url, "annotation file does not exist") from e
    except IsADirectoryError as e:
        raise AnnotationMalformed(url, "annotation path is a folder") from e
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AnnotationMalformed(url, f"not UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise AnnotationMalformed(url, f"invalid JSON: {e}") from e


def load_annotation(url: str, source: str, video_id: str) -> Annotation:
    """Parse and structurally validate one SA-V masklet JSON of video ``video_id``.

    Tolerates the known type drift (float sizes and frames, null/nested stability scores, str
    environment). RLE contents are validated later, per masklet, against the video size.
    """
    d = read_json(url)
    if not isinstance(d, dict):
        raise AnnotationMalformed(url, f"top level is {type(d).__name__}, not an object")
    jid = d.get("video_id", video_id)
    if not isinstance(jid, str) or jid != video_id:
        raise UnsafeId(url, f"video_id {jid!r} disagrees with the file name id {video_id!r}")
    for k in ("video_height", "video_width", "masklet"):
        if k not in d:
            raise AnnotationMalformed(url, f"missing field {k!r}")
    height = _as_int(d["video_height"], url, "video_height")
    width = _as_int(d["video_width"], url, "video_width")
    if height <= 0 or width <= 0:
        raise AnnotationMalformed(url, f"video size {height}x{width} is not positive")
    frames = d["masklet"]
    if not isinstance(frames, list) or not all(isinstance(f, list) for f in frames):
        raise AnnotationMalformed(url, "'masklet' is not a list of per-frame lists")
    if not frames:
        raise AnnotationMalformed(url, "'masklet' has no annotated frames")
    n_obj = len(frames[0])
    for i, f in enumerate(frames):
        if len(f) != n_obj:
            raise AnnotationMalformed(url, f"annotated frame {i} lists {len(f)} objects, frame 0 lists {n_obj}")
    ids_raw = d.get("masklet_id", list(range(n_obj)))
    if not isinstance(ids_raw, list) or len(ids_raw) != n_obj:
        raise AnnotationMalformed(url, f"masklet_id {ids_raw!r:.80} does not list {n_obj} ids")
    ids = [_as_int(v, url, f"masklet_id[{j}]") for j, v in enumerate(ids_raw)]
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise AnnotationMalformed(url, f"masklet_id {ids} has negative or duplicate ids")
    if "masklet_num" in d and d["masklet_num"] is not None:
        if _as_int(d["masklet_num"], url, "masklet_num") != n_obj:
            raise AnnotationMalformed(url, f"masklet_num {d['masklet_num']!r} but {n_obj} objects per frame")
    fps = None
    count, duration = _opt_float(d.get("video_frame_count")), _opt_float(d.get("video_duration"))
    if count and duration and count > 0 and duration > 0:
        fps = count / duration
    first = d.get("masklet_first_appeared_frame")
    first_appeared: list[int | None] = [None] * n_obj
    if isinstance(first, list) and len(first) == n_obj:
        first_appeared = [int(v) if _opt_float(v) is not None else None for v in first]
    frame_count = int(count) if count and count > 0 and count == int(count) else None
    return Annotation(url, source, video_id, height, width, ids, frames, fps, first_appeared, frame_count)
