"""Synthetic SA-V split with ground-truth alpha: ``python -m pipeline.synth --out DIR --videos N``.

Writes, under ``DIR/<split>`` (default ``sav_train``):

- ``sav_NNN/<vid>.mp4``: real H.264 (libx264, yuv420p, 24 fps, GOP 48, low CRF), objects with
  feathered, hair-like and motion-blurred edges over a textured or real (bedroom.mp4) background;
- ``sav_NNN/<vid>_manual.json`` and ``<vid>_auto.json`` in the SA-V schema (same fields and types as
  the real files): masks are the ground-truth visible alpha binarised (8-bit alpha >= 128), one
  annotated frame every 4 video frames;
- ``gt_alpha/<vid>/<obj:03d>/<annotated_idx:05d>.png``: 8-bit ground-truth visible alpha of each
  object at each annotated frame (video frame 4*annotated_idx);
- ``synth_meta.json``: the specs, so frames can be re-rendered (:func:`render`) for checks.

``--rotate DEG`` (``VideoSpec.rotate``) writes phone-style rotated mp4s: the coded pictures are the
rendered frames turned counter-clockwise by DEG, and the container's display matrix (PyAV
``VideoStream.set_display_rotation``) turns them back clockwise by DEG, so a player, the JSON and the
ground truth all show the rendered (display) orientation, e.g. portrait annotations over landscape
coded pictures.

Same seed, same JSON and ground-truth PNG bytes; the mp4 content is the same within codec
tolerance (libx264 through PyAV is not byte-reproducible run to run in this environment).

Object 0 is always visible (feathered ellipse), object 1 (hair-like strands) disappears for a while,
object 2 (motion-blurred box) appears late. Everything is seeded and deterministic.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from mava import lifecycle
from pipeline import sav

log = logging.getLogger(__name__)

FPS = 24
RATIO = 4
GT_DIR = "gt_alpha"
META_FILE = "synth_meta.json"
DEFAULT_BG = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "video" / "bedroom.mp4"


@dataclass(frozen=True)
class VideoSpec:
    video_id: str
    width: int
    height: int
    num_frames: int
    seed: int
    background: str = ""      # path of a real background video; "" = procedural texture
    simple: bool = False      # long-video mode: one cheap object, no hair/blur
    crf: int = 12
    preset: str = "medium"
    rotate: int = 0           # clockwise display rotation written in the mp4 (0, 90, 180, 270)


# --- rendering ------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Seeded colourful texture (float32 [h, w, 3] in 0..1): smooth noise + fine grain + stripes."""
    low = cv2.resize(rng.random((max(2, h // 16), max(2, w // 16), 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    fine = rng.random((h, w, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin((xx * 0.21 + yy * 0.13))[..., None]
    tex = 0.55 * low + 0.2 * fine + 0.25 * stripes * rng.random(3).astype(np.float32)
    return np.clip(tex, 0, 1)


@functools.lru_cache(maxsize=4)
def _real_background(path: str, w: int, h: int, n: int) -> np.ndarray:
    """The first ``n`` frames of a real video, centre-cropped to the aspect and resized (uint8)."""
    import av

    out = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="rgb24")
            ih, iw = img.shape[:2]
            if iw * h > ih * w:   # crop width
                cw = ih * w // h
                img = img[:, (iw - cw) // 2:(iw - cw) // 2 + cw]
            else:
                ch = iw * h // w
                img = img[(ih - ch) // 2:(ih - ch) // 2 + ch]
            out.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
            if len(out) >= n:
                break
    return np.stack(out)


def _smooth_disk(d: np.ndarray, radius: float, feather: float) -> np.ndarray:
    x = np.clip((radius - d) / feather + 0.5, 0, 1)
    return (x * x * (3 - 2 * x)).astype(np.float32)


class _Renderer:
    def __init__(self, spec: VideoSpec):
        self.s = spec
        h, w = spec.height, spec.width
        rng = np.random.default_rng([spec.seed, 7])
        self.tex = _texture(rng, 2 * h, 2 * w)
        self.pan = rng.uniform(-1.5, 1.5, 2)
        self.colors = rng.uniform(0.1, 0.95, (3, 3)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, 6)
        self.strands = rng.uniform(0, 2 * np.pi, 40)
        self.bg = None
        if spec.background and os.path.exists(spec.background):
            self.bg = _real_background(spec.background, w, h, min(spec.num_frames, 200))
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        n = spec.num_frames
        self.gone = (int(n * 0.35), int(n * 0.6))   # object 1 hidden in these video frames
        self.late = int(n * 0.5)                     # object 2 appears here
        self.objpat = [0.8 + 0.2 * np.sin(self.xx * (0.3 + 0.1 * k) + self.yy * 0.2 * k)[..., None]
                       for k in range(3)]

    def background(self, t: int) -> np.ndarray:
        h, w = self.s.height, self.s.width
        if self.bg is not None:
            n = len(self.bg)
            k = t % (2 * n - 2) if n > 1 else 0
            return self.bg[k if k < n else 2 * n - 2 - k].astype(np.float32) / 255
        oy = int(abs(self.pan[0] * t)) % h
        ox = int(abs(self.pan[1] * t)) % w
        return self.tex[oy:oy + h, ox:ox + w]

    def alphas(self, t: int) -> list[np.ndarray]:
        """Per-object alpha (float32 [H, W]) at video frame t, before occlusion."""
        s, n = self.s, self.s.num_frames
        h, w = s.height, s.width
        m = min(h, w)
        u = t / max(1, n - 1)
        ph = self.phase
        # object 0: feathered ellipse, always visible
        cx = w * (0.35 + 0.15 * np.sin(2 * np.pi * u + ph[0]))
        cy = h * (0.45 + 0.15 * np.cos(2 * np.pi * u + ph[1]))
        d = np.sqrt(((self.xx - cx) / 1.3) ** 2 + (self.yy - cy) ** 2)
        a0 = _smooth_disk(d, 0.16 * m, 0.06 * m)
        # object 1: small core with hair-like strands (supersampled anti-aliased lines), hidden a while
        a1 = np.zeros((h, w), np.float32)
        if not (self.gone[0] <= t < self.gone[1]):
            ss = 4
            canvas = np.zeros((h * ss, w * ss), np.uint8)
            c1 = (w * (0.65 + 0.1 * np.cos(2 * np.pi * u + ph[2])), h * (0.6 + 0.1 * np.sin(2 * np.pi * u + ph[3])))
            r = 0.09 * m
            cv2.circle(canvas, (int(c1[0] * ss), int(c1[1] * ss)), int(r * ss), 255, -1, cv2.LINE_AA)
            for k, ang in enumerate(self.strands):
                pts = []
                for j in range(8):
                    rr = r * (1 + 1.4 * j / 7)
                    a = ang + 0.25 * np.sin(j * 0.9 + t * 0.2 + k)
                    pts.append((c1[0] + rr * np.cos(a), c1[1] + rr * np.sin(a)))
                cv2.polylines(canvas, [(np.array(pts) * ss).astype(np.int32)], False, 255, 1 + k % 2, cv2.LINE_AA)
            a1 = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        # object 2: fast box with motion blur, appears late
        a2 = np.zeros((h, w), np.float32)
        if t >= self.late:
            v = (t - self.late) / max(1, n - self.late)
            sub = []
            for k in range(6):  # exposure: 6 sub-positions within the frame time
                x0 = w * (0.1 + 0.6 * (v + k / (6 * max(1, n - self.late))))
                dx = np.abs(self.xx - x0 - 0.1 * m) - 0.1 * m
                dy = np.abs(self.yy - h * 0.3) - 0.12 * m
                dist = np.maximum(dx, dy)
                sub.append(np.clip(0.5 - dist / (0.02 * m + 1), 0, 1))
            # the blur comes from motion: spread sub-positions further apart
            a2 = np.mean(sub, axis=0).astype(np.float32)
            a2 = cv2.blur(a2, (max(1, int(0.12 * m)), 1))
        return [a0, a1, a2]

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB frame [H, W, 3], visible alpha float32 [K, H, W]) at video frame t."""
        bg = self.background(t)
        al = self.alphas(t)
        img = bg.copy()
        for k, a in enumerate(al):
            img = img * (1 - a[..., None]) + (self.colors[k] * self.objpat[k]) * a[..., None]
        vis = []
        for k, a in enumerate(al):
            v = a.copy()
            for j in range(k + 1, len(al)):
                v *= 1 - al[j]
            vis.append(v)
        return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), np.stack(vis)


class _SimpleRenderer:
    """Cheap content for long high-resolution videos: panning gradient + one soft disk."""

    def __init__(self, spec: VideoSpec):
        self.s = spec
        h, w = spec.height, spec.width
        yy, xx = np.mgrid[0:h, 0:2 * w].astype(np.float32)
        self.tex = np.stack([xx / (2 * w), yy / h, 0.5 + 0.5 * np.sin(xx / 37.0)], -1)
        self.tex = (self.tex * 255).astype(np.uint8)
        r = min(h, w) // 6
        py, px = np.mgrid[-r:r, -r:r].astype(np.float32)
        self.patch = _smooth_disk(np.sqrt(px ** 2 + py ** 2), 0.8 * r, 0.2 * r)
        self.r = r

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        h, w, r = self.s.height, self.s.width, self.r
        ox = (3 * t) % w
        img = self.tex[:, ox:ox + w].copy()
        cx = int(w / 2 + (w / 2 - r - 1) * np.sin(t / 50.0))
        cy = int(h / 2 + (h / 2 - r - 1) * np.cos(t / 70.0))
        reg = img[cy - r:cy + r, cx - r:cx + r].astype(np.float32)
        a = self.patch[..., None]
        img[cy - r:cy + r, cx - r:cx + r] = (reg * (1 - a) + np.array([250, 40, 40]) * a + 0.5).astype(np.uint8)
        alpha = np.zeros((1, h, w), np.float32)
        alpha[0, cy - r:cy + r, cx - r:cx + r] = self.patch
        return img, alpha


def render(spec: VideoSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame uint8[H,W,3], visible alpha float32[K,H,W]) for every video frame, in order."""
    r = _SimpleRenderer(spec) if spec.simple else _Renderer(spec)
    for t in range(spec.num_frames):
        yield r.frame(t)


def alpha_u8(alpha: np.ndarray) -> np.ndarray:
    """8-bit ground-truth alpha as stored in gt_alpha PNGs."""
    return np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)


def gt_mask(alpha: np.ndarray) -> np.ndarray:
    """The binarised ground truth written as the SA-V masks: 8-bit alpha >= 128 (alpha > 0.5)."""
    return alpha_u8(alpha) >= 128


# --- writing --------------------------------------------------------------------------------------


def _size_bucket(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def _annotation(spec: VideoSpec, rles: list[list[dict]], areas: np.ndarray, source: str,
                rng: np.random.Generator) -> dict:
    """An SA-V JSON dict with the real files' fields and types (floats where they use floats)."""
    n_ann, k = areas.shape
    vis = areas > 0
    first = [int(np.argmax(vis[:, j])) if vis[:, j].any() else 0 for j in range(k)]
    changes = []
    for j in range(k):
        v = vis[first[j]:, j]
        changes.append(int(np.count_nonzero(v[1:] != v[:-1])))
    size_abs = [float(areas[vis[:, j], j].mean()) if vis[:, j].any() else 0.0 for j in range(k)]
    res = float(spec.height * spec.width)
    manual = source == "manual"
    return {
        "video_id": spec.video_id,
        "video_duration": spec.num_frames / FPS,
        "video_frame_count": float(spec.num_frames),
        "video_height": float(spec.height),
        "video_width": float(spec.width),
        "video_resolution": res,
        "video_environment": "Indoor" if spec.background else "Outdoor",
        "video_split": "train",
        "masklet": rles,
        "masklet_id": list(range(k)),
        "masklet_size_rel": [a / res for a in size_abs],
        "masklet_size_abs": size_abs,
        "masklet_size_bucket": [_size_bucket(a) for a in size_abs],
        "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": [float(f) for f in first] if manual else first,
        "masklet_frame_count": [n_ann] * k,
        "masklet_edited_frame_count": [int(rng.integers(1, n_ann + 1)) for _ in range(k)] if manual else [0] * k,
        "masklet_type": [source] * k,
        "masklet_stability_score": [None] * k if manual else
        [[round(float(x), 4) for x in rng.uniform(0.85, 1.0, n_ann)] for _ in range(k)],
        "masklet_num": k,
    }


def rgb_to_yuv420(img: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 planes stacked as [H*3/2, W] uint8 (what decoders assume).

    Done in numpy so the pixels handed to the encoder do not depend on swscale's build or flags.
    """
    x = img.astype(np.float32) / 255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape

    def sub(c):
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    q = lambda a: np.clip(a + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
    return np.concatenate([q(y), q(sub(cb)).reshape(h // 4, w), q(sub(cr)).reshape(h // 4, w)])


def coded_frame(img: np.ndarray, rotate: int) -> np.ndarray:
    """The coded picture of display frame ``img`` in an mp4 whose display rotation is ``rotate``
    (clockwise degrees): ``img`` turned counter-clockwise by ``rotate``."""
    return np.ascontiguousarray(np.rot90(img, k=rotate // 90)) if rotate else img


def write_video(spec: VideoSpec, folder: Path, gt_root: Path | None, threads: int = 1) -> Path:
    """Render, encode and annotate one video into ``folder``; GT alpha PNGs under ``gt_root``."""
    import av

    if spec.rotate not in (0, 90, 180, 270):
        raise ValueError(f"rotate must be 0, 90, 180 or 270, got {spec.rotate}")
    folder.mkdir(parents=True, exist_ok=True)
    mp4 = folder / f"{spec.video_id}.mp4"
    tmp = folder / f".{spec.video_id}.mp4.part"
    n_ann = (spec.num_frames - 1) // RATIO + 1
    rles: list[list[dict]] = []
    areas = []
    with av.open(str(tmp), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=FPS)
        coded_w, coded_h = (spec.height, spec.width) if spec.rotate % 180 else (spec.width, spec.height)
        st.width, st.height, st.pix_fmt = coded_w, coded_h, "yuv420p"
        if spec.rotate:
            st.set_display_rotation(-spec.rotate)   # PyAV takes counter-clockwise degrees
        st.codec_context.thread_count = threads
        st.options = {"crf": str(spec.crf), "preset": spec.preset, "x264-params": f"keyint=48:min-keyint=48:threads={threads}:lookahead-threads=1"}
        it = render(spec)
        if spec.num_frames > 500:
            it = tqdm(it, total=spec.num_frames, desc=spec.video_id, leave=False)
        for t, (img, alpha) in enumerate(it):
            coded = coded_frame(img, spec.rotate)
            if coded_h % 4 == 0:
                f = av.VideoFrame.from_ndarray(rgb_to_yuv420(coded), format="yuv420p")
            else:
                f = av.VideoFrame.from_ndarray(coded, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, FPS)
            for pkt in st.encode(f):
                c.mux(pkt)
            if t % RATIO == 0:
                i = t // RATIO
                u8 = alpha_u8(alpha)
                row = [sav.encode_mask(u8[j] >= 128) for j in range(len(u8))]
                rles.append(row)
                areas.append([int((u8[j] >= 128).sum()) for j in range(len(u8))])
                if gt_root is not None:
                    for j in range(len(u8)):
                        d = gt_root / spec.video_id / f"{j:03d}"
                        d.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(u8[j]).save(d / f"{i:05d}.png", optimize=False)
        for pkt in st.encode():
            c.mux(pkt)
    os.replace(tmp, mp4)
    assert len(rles) == n_ann
    rng = np.random.default_rng([spec.seed, 11])
    a = np.array(areas, dtype=np.float64)
    for source in ("manual", "auto"):
        with open(folder / f"{spec.video_id}_{source}.json", "w") as f:
            json.dump(_annotation(spec, rles, a, source, rng), f)
    return mp4


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height); both even (yuv420p)."""
    w, h = (int(v) for v in text.lower().split("x"))
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(f"size {text!r} must be WxH with positive even sides")
    return w, h


def make_specs(videos: int, frames: int, seed: int, sizes: list[str], background: str = "",
               crf: int = 12, rotate: int = 0) -> list[VideoSpec]:
    """Specs of a split: sizes cycle over videos; every other video uses the real background.

    ``sizes`` and the JSON are display sizes; ``rotate`` is the display rotation of every mp4."""
    out = []
    for i in range(videos):
        w, h = parse_size(sizes[i % len(sizes)])
        bg = background if (background and i % 2 == 1) else ""
        out.append(VideoSpec(f"sav_{i + 1:06d}", w, h, frames, seed * 1000 + i, bg, crf=crf, rotate=rotate))
    return out


def _spec_dict(spec: VideoSpec) -> dict:
    """The spec as stored in synth_meta.json (``rotate`` only when set, so older metas stay identical)."""
    d = asdict(spec)
    if not d["rotate"]:
        del d["rotate"]
    return d


def generate_split(out: Path, specs: list[VideoSpec], split: str = "sav_train", flat: bool = False,
                   gt: bool = True, threads: int = 1) -> Path:
    """Write a train-layout split under ``out/split``; returns the split folder."""
    root = Path(out) / split
    root.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(tqdm(specs, desc="synth", disable=len(specs) < 4)):
        folder = root if flat else root / f"sav_{i // 100:03d}"
        write_video(spec, folder, root / GT_DIR if gt and not spec.simple else None, threads=threads)
    meta = root / META_FILE
    old = json.loads(meta.read_text()) if meta.exists() else []
    keep = {d["video_id"]: d for d in old}
    keep.update({s.video_id: _spec_dict(s) for s in specs})
    meta.write_text(json.dumps([keep[k] for k in sorted(keep)], indent=1))
    return root


def load_specs(split_dir: Path) -> dict[str, VideoSpec]:
    """The specs a split was generated from, by video id."""
    return {d["video_id"]: VideoSpec(**d) for d in json.loads((Path(split_dir) / META_FILE).read_text())}


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m pipeline.synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("a video could not be encoded"))
    p.add_argument("--out", required=True, type=Path, help="data root; the split goes to OUT/SPLIT")
    p.add_argument("--videos", type=int, default=4, help="number of short videos (default 4)")
    p.add_argument("--frames", type=int, default=96, help="video frames per short video, 24 fps (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output (default 0)")
    p.add_argument("--sizes", nargs="+", default=["160x96", "96x160"],
                   help="WxH sizes cycled over the videos, even sides (default: 160x96 96x160)")
    p.add_argument("--split", default="sav_train", help="split folder name (default sav_train)")
    p.add_argument("--flat", action="store_true", help="put files directly in the split folder, no sav_NNN/")
    p.add_argument("--background", default=str(DEFAULT_BG) if DEFAULT_BG.exists() else "",
                   help="real footage used as background of every other video ('' = textures only)")
    p.add_argument("--crf", type=int, default=12, help="x264 CRF of short videos (default 12: near lossless)")
    p.add_argument("--long", type=int, default=0, metavar="N",
                   help="also write one long video of N frames (simple content, for memory benchmarks)")
    p.add_argument("--long-size", default="1920x1080", help="WxH of the long video (default 1920x1080)")
    p.add_argument("--threads", type=int, default=1, help="x264 threads (default 1)")
    p.add_argument("--rotate", type=int, choices=[0, 90, 180, 270], default=0,
                   help="display rotation (clockwise degrees) written in every short mp4; sizes, JSON and "
                        "ground truth stay in display orientation (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for name, v, lo in (("--videos", a.videos, 0), ("--frames", a.frames, 1), ("--long", a.long, 0),
                        ("--threads", a.threads, 1)):
        if v < lo:
            p.error(f"{name} must be at least {lo}, not {v}")
    if a.background and not os.path.isfile(a.background):
        p.error(f"--background {a.background} is not a file")
    try:
        for size in [*a.sizes, a.long_size]:
            parse_size(size)
        (a.out / a.split).mkdir(parents=True, exist_ok=True)
    except ValueError as exc:
        p.error(str(exc))
    except OSError as exc:
        p.error(f"cannot write to --out {a.out}: {exc.strerror or exc}")
    specs = make_specs(a.videos, a.frames, a.seed, a.sizes, a.background, a.crf, a.rotate)
    if a.long:
        w, h = parse_size(a.long_size)
        specs.append(VideoSpec(f"sav_{a.videos + 1:06d}", w, h, a.long, a.seed * 1000 + a.videos,
                               simple=True, crf=23, preset="ultrafast"))
    root = generate_split(a.out, specs, a.split, a.flat, threads=a.threads)
    print(f"wrote {len(specs)} videos to {root}")
    return lifecycle.EXIT_OK


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
