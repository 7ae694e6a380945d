"""Video decoding behind one small interface, with exact frame indices and bounded memory.

Backends: ``decord`` (default) and ``pyav``; a folder of JPEG frames (SA-V val/test layout) is read
by :class:`FrameFolderDecoder` with either backend name. ``open_video(url)`` (alias ``open``) returns
a :class:`Decoder`; ``get(indices)`` returns ``uint8[N, H, W, 3]`` RGB frames in the requested order.
Only requested frames are kept; nothing holds the whole video.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import shutil
import tempfile
from typing import Protocol, Sequence

import numpy as np

from pipeline import sav
from pipeline.errors import VideoCorrupt, VideoMissing

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
JPEG_EXTS = (".jpg", ".jpeg")


class Decoder(Protocol):
    num_frames: int
    fps: float
    height: int
    width: int

    def get(self, indices: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def _check_complete(url: str, readable: int, declared: int) -> None:
    """A container whose index declares more frames than can be read is truncated."""
    if declared and readable < declared:
        raise VideoCorrupt(url, f"truncated: the header declares {declared} frames, only {readable} can be read")


def _check_indices(url: str, indices: Sequence[int], n: int) -> list[int]:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise VideoCorrupt(url, f"frame {bad[0]} requested, the video has {n} frames")
    return idx


def _gather(idx: list[int], decoded: dict[int, np.ndarray], h: int, w: int) -> np.ndarray:
    out = np.empty((len(idx), h, w, 3), dtype=np.uint8)
    for k, i in enumerate(idx):
        out[k] = decoded[i]
    return out


class _LocalCopy:
    """A local file for a remote URL (decord needs a path); removed on close."""

    def __init__(self, url: str):
        fs, path = sav.url_fs(url)
        fd, self.path = tempfile.mkstemp(suffix=os.path.splitext(path)[1] or ".mp4")
        with os.fdopen(fd, "wb") as dst, fs.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, 8 << 20)

    def close(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)


def _probe(url: str, source) -> tuple[int, int, int]:
    """(height, width, declared frame count or 0) of the first video stream, from the header."""
    import av

    try:
        with av.open(source) as c:
            st = c.streams.video[0]
            return int(st.codec_context.height), int(st.codec_context.width), int(st.frames or 0)
    except (av.FFmpegError, IndexError, OSError) as e:
        raise VideoCorrupt(url, f"cannot open video: {e}") from e


class DecordDecoder:
    """decord.VideoReader with seeks; ``get_batch`` on sorted unique indices."""

    def __init__(self, url: str, threads: int = 1):
        import decord

        self.url = url
        self._copy = None
        path = url
        if not sav.is_local(url):
            self._copy = _LocalCopy(url)
            path = self._copy.path
        else:
            path = sav.url_fs(url)[1]
        self.height, self.width, declared = _probe(url, path)
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        except (decord.DECORDError, RuntimeError) as e:
            self.close()
            raise VideoCorrupt(url, f"cannot open video: {e}") from e
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        try:
            if self.num_frames <= 0:
                raise VideoCorrupt(url, "video has no frames")
            _check_complete(url, self.num_frames, declared)
        except VideoCorrupt:
            self.close()
            raise

    def get(self, indices: Sequence[int]) -> np.ndarray:
        import decord

        idx = _check_indices(self.url, indices, self.num_frames)
        uniq = sorted(set(idx))
        if not uniq:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        try:
            arr = self._vr.get_batch(uniq).asnumpy()
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoCorrupt(self.url, f"cannot decode frames {uniq[0]}..{uniq[-1]}: {e}") from e
        if arr.shape != (len(uniq), self.height, self.width, 3):
            raise VideoCorrupt(self.url, f"decoded shape {arr.shape}, expected {self.height}x{self.width}")
        return _gather(idx, dict(zip(uniq, arr)), self.height, self.width)

    def close(self) -> None:
        self._vr = None
        if self._copy is not None:
            self._copy.close()
            self._copy = None


class PyAVDecoder:
    """PyAV streaming decoder with a packet index (frame number <-> pts, keyframes).

    The index is built once by demuxing (no decoding); ``get`` decodes forward and seeks only when a
    keyframe lies between the current position and the next wanted frame.
    """

    def __init__(self, url: str, threads: int = 1):
        import av

        self.url = url
        self._file = None
        try:
            if sav.is_local(url):
                self._c = av.open(sav.url_fs(url)[1])
            else:
                fs, path = sav.url_fs(url)
                self._file = fs.open(path, "rb")
                self._c = av.open(self._file)
            self._s = self._c.streams.video[0]
            self._s.thread_count = max(1, threads)
            pts, keys = [], []
            for pkt in self._c.demux(self._s):
                if pkt.pts is None or pkt.size == 0:
                    continue
                pts.append(int(pkt.pts))
                if pkt.is_keyframe:
                    keys.append(int(pkt.pts))
        except (av.FFmpegError, IndexError, OSError) as e:
            self.close()
            raise VideoCorrupt(url, f"cannot open video: {e}") from e
        self._pts = sorted(pts)
        self._idx = {p: i for i, p in enumerate(self._pts)}
        self._keys = sorted(self._idx[p] for p in keys)
        self.num_frames = len(self._pts)
        try:
            if self.num_frames == 0 or not self._keys:
                raise VideoCorrupt(url, "video has no decodable frames")
            _check_complete(url, self.num_frames, int(self._s.frames or 0))
        except VideoCorrupt:
            self.close()
            raise
        cc = self._s.codec_context
        self.height, self.width = int(cc.height), int(cc.width)
        rate = self._s.average_rate or self._s.guessed_rate
        self.fps = float(rate) if rate else sav.VIDEO_FPS
        self._it = None
        self._pos = None  # index of the next frame the iterator yields

    def _seek(self, target: int) -> None:
        k = self._keys[max(0, bisect.bisect_right(self._keys, target) - 1)]
        self._c.seek(self._pts[k], stream=self._s, backward=True, any_frame=False)
        self._it = self._c.decode(self._s)
        self._pos = k

    def _decode_to(self, target: int, retried: bool = False) -> np.ndarray:
        import av

        if self._it is None or target < self._pos or (
            bisect.bisect_right(self._keys, target) > bisect.bisect_right(self._keys, self._pos)
        ):
            self._seek(target)
        while True:
            try:
                frame = next(self._it)
            except StopIteration:
                raise VideoCorrupt(self.url, f"stream ended before frame {target}") from None
            except av.FFmpegError as e:
                raise VideoCorrupt(self.url, f"cannot decode frame {target}: {e}") from e
            i = self._idx.get(frame.pts)
            if i is None:
                raise VideoCorrupt(self.url, f"decoded a frame with unknown pts {frame.pts}")
            self._pos = i + 1
            if i == target:
                return frame.to_ndarray(format="rgb24")
            if i > target:
                if retried:
                    raise VideoCorrupt(self.url, f"frame {target} was skipped by the decoder")
                self._it = None
                return self._decode_to(target, retried=True)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(self.url, indices, self.num_frames)
        decoded = {}
        for t in sorted(set(idx)):
            arr = self._decode_to(t)
            if arr.shape != (self.height, self.width, 3):
                raise VideoCorrupt(self.url, f"frame {t} has shape {arr.shape}")
            decoded[t] = arr
        return _gather(idx, decoded, self.height, self.width)

    def close(self) -> None:
        c = getattr(self, "_c", None)
        if c is not None:
            c.close()
            self._c = None
        if self._file is not None:
            self._file.close()
            self._file = None


class FrameFolderDecoder:
    """A folder of JPEG frames (``%05d.jpg``) read as a video; frame i is the i-th file by name."""

    def __init__(self, url: str, fps: float = sav.VIDEO_FPS):
        self.url = url
        self._files = [n for n, t in sav._ls(url) if t != "directory" and n.lower().endswith(JPEG_EXTS)]
        if not self._files:
            raise VideoMissing(url, "frame folder has no JPEG frames")
        self.num_frames = len(self._files)
        self.fps = float(fps)
        self.height, self.width = self._read(0).shape[:2]

    def _read(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        fs, path = sav.url_fs(sav.join(self.url, self._files[i]))
        try:
            with fs.open(path, "rb") as f:
                img = Image.open(io.BytesIO(f.read()))
                return np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise VideoCorrupt(sav.join(self.url, self._files[i]), f"cannot decode frame: {e}") from e

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(self.url, indices, self.num_frames)
        decoded = {}
        for t in sorted(set(idx)):
            arr = self._read(t)
            if arr.shape != (self.height, self.width, 3):
                raise VideoCorrupt(sav.join(self.url, self._files[t]), f"frame size {arr.shape[:2]} differs")
            decoded[t] = arr
        return _gather(idx, decoded, self.height, self.width)

    def close(self) -> None:
        pass


def open_video(url: str, backend: str = "decord", threads: int = 1) -> Decoder:
    """Open an mp4 (or a JPEG frame folder) with the named backend.

    Raises VideoMissing when nothing is at ``url``, VideoCorrupt when it cannot be opened.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    fs, path = sav.url_fs(url)
    if not fs.exists(path):
        raise VideoMissing(url, "video does not exist")
    if fs.isdir(path):
        return FrameFolderDecoder(url)
    if fs.size(path) == 0:
        raise VideoCorrupt(url, "video file is empty")
    if backend == "decord":
        return DecordDecoder(url, threads=threads)
    return PyAVDecoder(url, threads=threads)


open = open_video  # noqa: A001  (the documented short name: video.open(url))
