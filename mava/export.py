"""``python -m mava export``: one masklet's segments stitched into a full-length alpha sequence.

A masklet is written as overlapping windows of up to 12 annotated frames (the last window is shifted
back so it stays full). Export puts them back on the annotated timeline using the frame indices each
sample records, and where two windows overlap it cross-fades linearly: over an overlap of n frames
the later window's weight is k/(n+1) at its k-th shared frame (k = 1..n), so neither window's matte
switches to the other's in one step. The seam is measured as ``mava eval`` does: dtSSD of frame
pairs that cross from one window to the next (the last frame before the next window's first new
frame) against pairs inside a window, for the stitched sequence and for the plain join eval scores
(each frame from the first window that covers it). With ground truth (``--gt``) that is dtSSD proper;
without, it is dtSSD against a static reference, i.e. the RMS change between consecutive mattes.

Upsampling to the 24 fps video timeline (``--fps 24``) holds the nearest annotated matte: every
output frame is a matte the model made, at most 2 video frames (83 ms) from its own time. Linear
interpolation would cross-dissolve two mattes of a moving object into a doubled, half-transparent
edge that is in neither frame; for an edge that moves, a matte that is slightly late is the smaller
error for compositing. (Use ``--upsample linear`` for near-static objects, where it only smooths.)
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np
from PIL import Image

from mava import schema
from mava.schema import Col
from mava.folder import SplitDir
from mava.sample import decode_sample
from mava.views import subset_keys
from mava.state import SplitState, inspect_split, vouched_manifest

log = logging.getLogger(__name__)

ANN_FPS = 6.0
VIDEO_FPS = 24.0
UPSAMPLE = ("nearest", "linear")
ALPHA_DIR = "alpha"            # <out>/alpha/<annotated frame:05d>.png
#: x264 quality of the exported matte videos (with X264_TUNE): 6 keeps 8-bit mattes within ~6 levels of the
#: PNGs on fine hair
DEFAULT_CRF = 6
#: x264's psychovisual optimisations (psy-rd, adaptive quantisation) move bits away from fine detail where
#: a viewer would not notice; in a matte that detail is the data (hair, motion blur), and they put single
#: pixels 18-22 levels off at crf 6 on some clips. ``tune=psnr`` turns them off: every clip measured within
#: 6 levels, for ~17% more bytes.
X264_TUNE = "psnr"
VIDEO_NAME = "alpha.mp4"
ALPHA_24_DIR = "alpha_24fps"   # <out>/alpha_24fps/<video frame:05d>.png
VIDEO_24_NAME = "alpha_24fps.mp4"
REPORT_NAME = "export.json"


@dataclass
class Window:
    """One segment of the masklet: its key, annotated and video frame indices and 8-bit alpha."""

    key: str
    ann: list[int]
    video: list[int]
    alpha: np.ndarray  # uint8[T,H,W]


@dataclass
class Stitched:
    """A masklet's alpha over its annotated frames."""

    video_id: str
    source: str
    masklet_id: int
    ann: list[int]                 # annotated frame indices, increasing, one per frame of `alpha`
    video: list[int]               # their video (24 fps) frame indices, as recorded
    alpha: np.ndarray              # float32[N,H,W] in [0,1]: windows cross-faded where they overlap
    first_wins: np.ndarray         # float32[N,H,W]: each frame from the first window covering it (eval's join)
    windows: list[Window]
    starts: list[int] = field(default_factory=list)     # positions in `ann` where a window's new frames begin
    overlaps: list[int] = field(default_factory=list)   # frames shared by window i-1 and i (i >= 1)
    gaps: list[int] = field(default_factory=list)       # annotated frames between first and last not covered

    @property
    def name(self) -> str:
        return f"{self.video_id}_{schema.SOURCE_CODE[self.source]}{self.masklet_id:03d}"


def load_windows(split_dir: str | SplitDir | SplitState, video_id: str, masklet_id: int, source: str | None = None,
                 subset: str | None = None) -> tuple[str, list[Window]]:
    """(source, windows in start order) of one masklet's ok samples in the split's finished shards;
    `source` None picks manual if present; `subset`: only the samples of that named view (``mava
    filter``). KeyError when there are none."""
    st = split_dir if isinstance(split_dir, SplitState) else inspect_split(split_dir, need_finished=True)
    split = st.dir
    keep = None if subset is None else subset_keys(split, subset)
    table = vouched_manifest(st).table
    rows = [r for r in table.to_pylist() if r[Col.STATUS] == schema.STATUS_OK and r[Col.VIDEO_ID] == video_id
            and r[Col.MASKLET_ID] == int(masklet_id) and (keep is None or r[Col.KEY] in keep)]
    sources = sorted({r[Col.SOURCE] for r in rows})
    if source is None:
        source = "manual" if "manual" in sources else (sources[0] if sources else "manual")
    rows = sorted((r for r in rows if r[Col.SOURCE] == source), key=lambda r: r[Col.START])
    if not rows:
        raise KeyError(f"no ok samples of video {video_id!r} masklet {masklet_id} ({source}) in {split.url}"
                       + (f"; sources present: {sources}" if sources else ""))
    out = []
    for r in rows:
        s = decode_sample(r[Col.KEY], split.row_members(r), None, ("alpha",),
                          shard=split.url_of(schema.shard_file(r[Col.SHARD])))
        out.append(Window(r[Col.KEY], list(s.meta[Col.ANN_FRAMES]), list(s.meta[Col.VIDEO_FRAMES]), s.alpha))
    return source, out


def stitch(video_id: str, source: str, masklet_id: int, windows: list[Window]) -> Stitched:
    """Join windows on the annotated timeline; linear cross-fade where consecutive windows overlap."""
    if not windows:
        raise ValueError("nothing to stitch")
    shapes = {w.alpha.shape[1:] for w in windows}
    if len(shapes) != 1:
        raise ValueError(f"windows of different sizes {sorted(shapes)}")
    acc: dict[int, list[tuple[float, np.ndarray]]] = {}   # ann -> [(weight, alpha)]
    first: dict[int, np.ndarray] = {}
    video_of: dict[int, int] = {}
    starts_ann, overlaps = [], []
    prev: Window | None = None
    for w in sorted(windows, key=lambda w: w.ann[0]):
        shared = [a for a in w.ann if prev is not None and a in set(prev.ann)]
        n = len(shared)
        if prev is not None:
            overlaps.append(n)
        for t, a in enumerate(w.ann):
            x = w.alpha[t].astype(np.float32) / 255.0
            video_of.setdefault(a, w.video[t])
            first.setdefault(a, x)
            if a in shared:  # the k-th shared frame: later window weighs k/(n+1), earlier the rest
                k = shared.index(a) + 1
                wt = k / (n + 1)
                before = sum(c * y for c, y in acc[a])
                acc[a] = [(1.0 - wt, before), (wt, x)]
            else:
                acc.setdefault(a, []).append((1.0, x))
        new = [a for a in w.ann if a not in shared]
        if new:
            starts_ann.append(new[0])
        prev = w
    ann = sorted(acc)
    alpha = np.stack([sum(wt * x for wt, x in acc[a]) for a in ann]).astype(np.float32)
    gaps = sorted(set(range(ann[0], ann[-1] + 1)) - set(ann))
    pos = {a: i for i, a in enumerate(ann)}
    return Stitched(video_id, source, int(masklet_id), ann, [video_of[a] for a in ann], np.clip(alpha, 0, 1),
                    np.stack([first[a] for a in ann]), sorted(windows, key=lambda w: w.ann[0]),
                    starts=[pos[a] for a in starts_ann[1:]], overlaps=overlaps, gaps=gaps)


def seam_report(st: Stitched, gt: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """dtSSD x1e2 at window boundaries vs inside windows, for the cross-fade and eval's first-wins join.

    Pairs are consecutive annotated frames only (a gap breaks the chain); the pair ending at a
    window's first new frame is a boundary pair. `gt`: float[N,H,W] ground truth on the same frames
    (None: a static reference, so the figure is the RMS change between consecutive mattes)."""
    from mava import metrics

    ref = gt if gt is not None else np.zeros_like(st.alpha)
    starts = set(st.starts)
    out = {}
    for name, seq in (("crossfade", st.alpha), ("first_wins", st.first_wins)):
        v = metrics.dtssd_pairs(seq.astype(np.float64), ref.astype(np.float64))
        bnd = [float(v[i - 1]) for i in range(1, len(st.ann)) if st.ann[i] == st.ann[i - 1] + 1 and i in starts]
        ins = [float(v[i - 1]) for i in range(1, len(st.ann)) if st.ann[i] == st.ann[i - 1] + 1 and i not in starts]
        b = float(np.mean(bnd)) if bnd else float("nan")
        n = float(np.mean(ins)) if ins else float("nan")
        out[name] = {"dtssd_boundary": b, "dtssd_inside": n, "jump": b - n, "boundary_pairs": len(bnd),
                     "inside_pairs": len(ins)}
    return out


def read_gt(gt_dir: str, st: Stitched) -> np.ndarray | None:
    """Ground truth in ``mava eval``'s layout for every stitched frame, or None if any is missing."""
    from mava.eval import gt_path, read_alpha_png

    fs, root = fsspec.core.url_to_fs(gt_dir)
    root = root.rstrip("/")
    paths = [f"{root}/{gt_path(st.video_id, st.masklet_id, a)}" for a in st.ann]
    missing = [p for p in paths if not fs.exists(p)]
    if missing:
        log.warning("%d of %d frames have no ground truth under %s (first: %s): seam without GT",
                    len(missing), len(paths), gt_dir, missing[0])
        return None
    return np.stack([read_alpha_png(fs, p) for p in paths]).astype(np.float32)


def upsample(st: Stitched, method: str = "nearest") -> tuple[list[int], np.ndarray]:
    """(video frame indices, float[M,H,W]) on the 24 fps timeline from the first to the last annotated
    frame: `nearest` holds the annotated matte nearest in time (ties: the earlier one), `linear`
    interpolates between the two annotated mattes around each video frame. Gaps are filled the same way."""
    if method not in UPSAMPLE:
        raise ValueError(f"upsample must be one of {UPSAMPLE}")
    vid = np.asarray(st.video, np.float64)
    frames = list(range(int(vid[0]), int(vid[-1]) + 1))
    out = np.empty((len(frames),) + st.alpha.shape[1:], np.float32)
    for j, v in enumerate(frames):
        hi = int(np.searchsorted(vid, v, side="left"))
        if hi < len(vid) and vid[hi] == v:
            out[j] = st.alpha[hi]
            continue
        lo = hi - 1
        if method == "nearest":
            out[j] = st.alpha[lo] if v - vid[lo] <= vid[hi] - v else st.alpha[hi]
        else:
            w = (v - vid[lo]) / (vid[hi] - vid[lo])
            out[j] = (1 - w) * st.alpha[lo] + w * st.alpha[hi]
    return frames, out


def to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def write_png_sequence(fs: fsspec.AbstractFileSystem, folder: str, indices: list[int], alpha: np.ndarray) -> None:
    """8-bit grayscale PNGs named by frame index (``%05d.png``, as SA-V names its frames)."""
    fs.makedirs(folder, exist_ok=True)
    for i, a in zip(indices, alpha):
        b = io.BytesIO()
        Image.fromarray(to_u8(a), "L").save(b, format="PNG")
        with fs.open(f"{folder}/{int(i):05d}.png", "wb") as f:
            f.write(b.getvalue())


def write_mp4(fs: fsspec.AbstractFileSystem, path: str, alpha: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> None:
    """A grayscale matte video: H.264 (PyAV), yuv420p so that editors and browsers play it; the matte
    is the luma (chroma neutral). Odd sides are padded by one replicated pixel (4:2:0 needs even sides)."""
    import av

    u8 = to_u8(alpha)
    h, w = u8.shape[1:]
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        u8 = np.pad(u8, ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = {"crf": str(int(crf)), "tune": X264_TUNE}
        for a in u8:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="gray")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


@dataclass
class ExportResult:
    stitched: Stitched
    report: dict
    files: list[str]


class ExportError(ValueError):
    """The export cannot be written where asked (one line for the user)."""


#: what an export writes in its folder: ``--overwrite`` removes exactly these, and nothing else may be there
OWN_DIRS = (ALPHA_DIR, ALPHA_24_DIR)
OWN_FILES = (VIDEO_NAME, VIDEO_24_NAME, REPORT_NAME)


def check_out(out_dir: str, overwrite: bool = False) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """(filesystem, folder, paths to remove first) of an export folder; :class:`ExportError` (one line)
    for a path that is a file or lies under one, a non-empty folder without ``overwrite``, and a folder
    holding anything an export does not write (or a file where it writes a folder) even with it."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    root = root.rstrip("/") or "/"
    if fs.isfile(root):
        raise ExportError(f"--out {out_dir} is a file, not a folder")
    parent = posixpath.dirname(root)
    while parent and parent != posixpath.dirname(parent) and not fs.isdir(parent):
        if fs.isfile(parent):
            raise ExportError(f"--out {out_dir}: {parent} is a file, not a folder")
        parent = posixpath.dirname(parent)
    if not fs.isdir(root):
        return fs, root, []
    entries = {posixpath.basename(e["name"].rstrip("/")): e["type"] for e in fs.ls(root, detail=True)}
    if not entries:
        return fs, root, []
    names = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    if not overwrite:
        raise ExportError(f"--out {out_dir} is not empty ({names}): export into a new or empty folder, or add "
                          "--overwrite to replace an earlier export there")
    foreign = sorted(n for n, kind in entries.items()
                     if not ((n in OWN_DIRS and kind == "directory") or (n in OWN_FILES and kind != "directory")))
    if foreign:
        raise ExportError(f"--out {out_dir} holds {', '.join(foreign[:5])}, which an export does not write there: "
                          "--overwrite replaces only an earlier export; choose another folder")
    # export.json first: while the rest goes, the folder no longer claims to be an export
    order = [n for n in OWN_FILES + OWN_DIRS if n in entries]
    order.sort(key=lambda n: n != REPORT_NAME)
    return fs, root, [f"{root}/{n}" for n in order]


def export(split_dir: str | SplitDir, video_id: str, masklet_id: int, out_dir: str, source: str | None = None,
           gt_dir: str | None = None, fps: float = ANN_FPS, upsample_method: str = "nearest", crf: int = DEFAULT_CRF,
           png: bool = True, overwrite: bool = False, subset: str | None = None) -> ExportResult:
    """Stitch one masklet and write its PNG sequence, MP4 and report (``export.json``, written last)
    under `out_dir`; with ``fps=24`` also the 24 fps timeline (PNGs named by video frame, and an MP4).

    `out_dir` must be new or empty; with ``overwrite`` it may hold an earlier export, whose files are
    removed first (after the masklet was read, so a failed export leaves the earlier one). Raises
    :class:`ExportError` for an output folder it may not write, KeyError for a masklet without ok
    samples, :class:`~mava.state.NotASplit` for a split path that is not one."""
    if fps not in (ANN_FPS, VIDEO_FPS):
        raise ValueError(f"fps must be {ANN_FPS:g} (annotated frames) or {VIDEO_FPS:g} (the video timeline)")
    fs, root, stale = check_out(out_dir, overwrite)
    source, windows = load_windows(split_dir, video_id, masklet_id, source, subset)
    st = stitch(video_id, source, masklet_id, windows)
    gt = read_gt(gt_dir, st) if gt_dir else None
    for path in stale:
        fs.rm(path, recursive=True)
    try:
        fs.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create --out {out_dir}: {type(exc).__name__}: {exc}") from exc
    files = []
    if png:
        write_png_sequence(fs, f"{root}/{ALPHA_DIR}", st.ann, st.alpha)
        files.append(f"{root}/{ALPHA_DIR}/")
    write_mp4(fs, f"{root}/{VIDEO_NAME}", st.alpha, ANN_FPS, crf)
    files.append(f"{root}/{VIDEO_NAME}")
    report = {
        "masklet": st.name, "video_id": video_id, "source": source, "masklet_id": int(masklet_id),
        "annotated_frames": [st.ann[0], st.ann[-1]], "frames": len(st.ann), "height": int(st.alpha.shape[1]),
        "width": int(st.alpha.shape[2]), "windows": [w.key for w in st.windows], "overlaps": st.overlaps,
        "gaps": st.gaps, "blend": "linear cross-fade over overlaps",
        "seam": seam_report(st, gt), "seam_reference": "ground truth" if gt is not None else
        "static (no GT): RMS change between consecutive mattes, x1e2",
        "video": {"file": VIDEO_NAME, "fps": ANN_FPS, "codec": "h264 yuv420p", "crf": int(crf), "tune": X264_TUNE},
        "files": [ALPHA_DIR] * png + [VIDEO_NAME],
    }
    if fps == VIDEO_FPS:
        vframes, up = upsample(st, upsample_method)
        if png:
            write_png_sequence(fs, f"{root}/{ALPHA_24_DIR}", vframes, up)
            files.append(f"{root}/{ALPHA_24_DIR}/")
            report["files"].append(ALPHA_24_DIR)
        write_mp4(fs, f"{root}/{VIDEO_24_NAME}", up, VIDEO_FPS, crf)
        files.append(f"{root}/{VIDEO_24_NAME}")
        report["files"].append(VIDEO_24_NAME)
        report["video_24fps"] = {"file": VIDEO_24_NAME, "fps": VIDEO_FPS, "video_frames": [vframes[0], vframes[-1]],
                                 "frames": len(vframes), "upsample": upsample_method}
    with fs.open(f"{root}/{REPORT_NAME}", "w") as f:
        json.dump(report, f, indent=1)
    files.append(f"{root}/{REPORT_NAME}")
    return ExportResult(st, report, files)


def render(report: dict) -> str:
    """The text summary of an export."""
    lines = [f"{report['masklet']}: {report['frames']} annotated frames {report['annotated_frames'][0]}.."
             f"{report['annotated_frames'][1]} from {len(report['windows'])} windows (overlaps {report['overlaps']})"
             + (f", gaps at {report['gaps']}" if report["gaps"] else "")]
    for name, s in report["seam"].items():
        lines.append(f"  {name:10s} dtSSD at window boundaries {s['dtssd_boundary']:.3f} vs inside "
                     f"{s['dtssd_inside']:.3f} (jump {s['jump']:+.3f}; {s['boundary_pairs']} boundary pairs)")
    lines.append(f"  reference: {report['seam_reference']}")
    if "video_24fps" in report:
        v = report["video_24fps"]
        lines.append(f"  24 fps: {v['frames']} video frames {v[Col.VIDEO_FRAMES][0]}..{v[Col.VIDEO_FRAMES][1]} "
                     f"({v['upsample']})")
    return "\n".join(lines)

