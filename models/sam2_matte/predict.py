"""Matte a whole video with SAM2-Matte from a first-frame prompt: one alpha PNG per video frame.

Videos are read here with PyAV (any fsspec URL, frames streamed in order, the container's display
rotation applied) or from a folder of images (sorted by name), so ``models`` needs nothing from
``pipeline``.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.sam2_matte import config as mcfg

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


# --- video input ----------------------------------------------------------------------------------


@dataclass
class VideoFrames:
    """Frames of a video file or image folder, streamed: ``len`` may be 0 when the container does not say."""

    url: str
    num_frames: int
    _iter: Callable[[], Iterator[np.ndarray]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._iter()


def _clockwise(frame) -> int:
    """Clockwise display rotation of a decoded PyAV frame (its ``rotation`` is counter-clockwise)."""
    return round(-float(frame.rotation or 0) / 90.0) * 90 % 360


def open_frames(url: str) -> VideoFrames:
    """A video file (mp4, ... via PyAV) or a folder of images, as uint8[H,W,3] RGB frames in order."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no such video or folder")
    if fs.isdir(path):
        files = sorted(p for p in fs.ls(path, detail=False) if p.lower().endswith(IMAGE_EXTS))
        if not files:
            raise ValueError(f"{url}: folder has no .jpg/.png frames")

        def folder() -> Iterator[np.ndarray]:
            for p in files:
                with fs.open(p, "rb") as f:
                    yield np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
        return VideoFrames(url, len(files), folder)
    import av

    def decode() -> Iterator[np.ndarray]:
        with fs.open(path, "rb") as f, av.open(f) as c:
            for frame in c.decode(c.streams.video[0]):
                arr = frame.to_ndarray(format="rgb24")
                k = _clockwise(frame) // 90
                yield np.ascontiguousarray(np.rot90(arr, k=-k)) if k else arr
    try:
        with fs.open(path, "rb") as f, av.open(f) as c:
            n = int(c.streams.video[0].frames or 0)
    except (av.FFmpegError, IndexError) as exn:
        raise ValueError(f"{url}: cannot open video: {exn}") from exn
    return VideoFrames(url, n, decode)


def read_mask(url: str) -> np.ndarray:
    """A prompt mask PNG: pixels >= 128 (any channel layout, as 8-bit gray) are the object."""
    with fsspec.open(url, "rb") as f:
        return np.asarray(Image.open(io.BytesIO(f.read())).convert("L")) >= 128


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--box must be x0,y0,x1,y1 (video pixels), got {text!r}") from None
    return x0, y0, x1, y1


# --- model ----------------------------------------------------------------------------------------


def resolve_checkpoint(url: str) -> str:
    """A checkpoint file, or a training ``--out`` folder (its model.pt, else its newest checkpoint)."""
    from models.sam2_matte.train import FINAL, RunDir

    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no such checkpoint")
    if not fs.isdir(path):
        return url
    run = RunDir(url)
    if run.exists(FINAL):
        return f"{run.url}/{FINAL}"
    ck = run.checkpoints()
    if not ck:
        raise FileNotFoundError(f"{url}: no {FINAL} and no checkpoints/ in this folder")
    return f"{run.url}/{ck[-1][1]}"


def load_model(checkpoint: str, model: str | None = None, image_size: int | None = None,
               device: str | torch.device = "cpu"):
    """SAM2-Matte from a SAM2-Matte checkpoint (model and size recorded inside) or a published SAM 2
    file (variant from `model` or from the file name, e.g. ``sam2.1_hiera_base_plus.pt``)."""
    mcfg.require_sam2()
    from models.sam2_matte import model as mm

    url = resolve_checkpoint(checkpoint)
    with fsspec.open(url, "rb") as f:
        obj = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "model" not in obj:
        raise ValueError(f"{url}: not a SAM 2 checkpoint (no 'model' entry)")
    meta = obj.get("sam2_matte") or {}
    name = model or meta.get("model") or mcfg.variant(posixpath.basename(url)).name
    recipe = mcfg.Recipe(**meta["recipe"]) if meta.get("recipe") else None
    net = mm.build_model(name, image_size or meta.get("image_size"), recipe)
    missing, unexpected = net.load_state_dict(obj["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{url} does not fit model {name!r}: {len(missing)} missing, {len(unexpected)} unexpected keys")
    return net.to(device).eval()


def predict(checkpoint: str, video: str, out: str, mask: str | None = None, box: str | None = None,
            every: int = 1, model: str | None = None, image_size: int | None = None, device: str = "auto",
            progress: bool = True) -> list[str]:
    """Write ``<out>/<frame:05d>.png`` (8-bit alpha, video size) for every `every`-th frame; returns the paths."""
    from models.sam2_matte.model import Prompt, Tracker

    if every < 1:
        raise ValueError("--every must be >= 1")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    frames = open_frames(video)
    net = load_model(checkpoint, model, image_size, dev)
    first = None
    prompt = Prompt(mask=read_mask(mask) if mask else None, box=parse_box(box) if box else None)

    def chosen() -> Iterator[np.ndarray]:
        nonlocal first
        for t, fr in enumerate(frames):
            if t % every == 0:
                if first is None:
                    first = fr.shape[:2]
                    if prompt.mask is not None and prompt.mask.shape != first:
                        raise ValueError(f"--mask is {prompt.mask.shape[1]}x{prompt.mask.shape[0]}, "
                                         f"the video is {first[1]}x{first[0]}")
                yield fr

    n = (frames.num_frames + every - 1) // every if frames.num_frames else 1 << 20
    ofs, root = fsspec.core.url_to_fs(out)
    ofs.makedirs(root, exist_ok=True)
    written = []
    tracker = Tracker(net, dev)
    bar = tqdm(total=n if frames.num_frames else None, desc="predict", unit="frame", disable=not progress)
    for k, alpha in enumerate(tracker.run(chosen(), prompt, n)):
        p = f"{root.rstrip('/')}/{k * every:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)).save(buf, format="PNG")
        ofs.pipe_file(p, buf.getvalue())
        written.append(p)
        bar.update(1)
    bar.close()
    if not written:
        raise ValueError(f"{video}: no frames decoded")
    log.info("wrote %d alpha PNGs to %s", len(written), out)
    return written
