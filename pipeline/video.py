"""Video decoding behind one small interface, with exact frame indices and bounded memory.

Backends: ``decord`` (default) and ``pyav``; a folder of JPEG frames (SA-V val/test layout) is read
by :class:`FrameFolderDecoder` with either backend name. ``open_video(url)`` (alias ``open``) returns
a :class:`Decoder`; ``get(indices)`` returns ``uint8[N, H, W, 3]`` RGB frames in the requested order.
Only requested frames are kept; nothing holds the whole video.

Rotation: an mp4 may carry a display rotation (a display matrix, or a legacy ``rotate`` tag) that
players apply to the coded pictures. Decoders expose it as ``display_rotation`` and by default return
display-oriented frames (``rotation == display_rotation``); ``open_video(..., rotation=0)`` returns the
coded pictures instead. Both backends return the same pixels either way (decord 0.6.0 rotates by
itself; it is turned back or forth here as needed). Angles are clockwise degrees in {0, 90, 180, 270},
the convention of the ``rotate`` tag (the display matrix's own angle is counter-clockwise).
"""

from __future__ import annotations

import bisect
import io
import logging
import math
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
ROTATIONS = (0, 90, 180, 270)


class Decoder(Protocol):
    """Frames of one video. ``height``/``width`` are those of the frames ``get`` returns, i.e. after
    ``rotation`` (clockwise degrees applied to the coded pictures); ``display_rotation`` is what the
    container asks players to apply."""

    num_frames: int
    fps: float
    height: int
    width: int
    rotation: int
    display_rotation: int

    def get(self, indices: Sequence[int]) -> np.ndarray: ...

    def set_rotation(self, rotation: int | None) -> None:
        """Turn the coded pictures by ``rotation`` from now on (None: the display rotation)."""

    def close(self) -> None: ...


class _Rotation:
    """``set_rotation`` for decoders that know their coded size (``_coded``) and display rotation."""

    _coded: tuple[int, int]
    display_rotation: int

    def set_rotation(self, rotation: int | None) -> None:
        _check_rotation(getattr(self, "url", ""), rotation)
        self.rotation = self.display_rotation if rotation is None else rotation
        self.height, self.width = rotated_size(*self._coded, self.rotation)


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


def rotate(arr: np.ndarray, degrees: int) -> np.ndarray:
    """``arr`` ([..., H, W, C] frames) turned clockwise by ``degrees`` (a multiple of 90); a view."""
    k = (degrees // 90) % 4
    return np.rot90(arr, k=-k, axes=(arr.ndim - 3, arr.ndim - 2)) if k else arr


def rotated_size(height: int, width: int, degrees: int) -> tuple[int, int]:
    """(height, width) of a ``height`` x ``width`` picture turned clockwise by ``degrees``."""
    return (width, height) if degrees % 180 else (height, width)


def _check_rotation(url: str, rotation: int | None) -> None:
    if rotation is not None and rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS} or None, got {rotation!r} ({url})")


def _matrix_rotation(url: str, frame) -> float:
    """Clockwise display rotation from a decoded frame's DISPLAYMATRIX side data (0 without one).

    Parsed here rather than read from ``VideoFrame.rotation``, which truncates to an int and hides
    mirroring; a mirrored matrix is refused (decord would ignore the mirror, and masks would not fit).
    """
    from av.sidedata.sidedata import Type

    for sd in frame.side_data:
        if sd.type != Type.DISPLAYMATRIX:
            continue
        m = np.frombuffer(bytes(sd), dtype=np.int32)[:9].astype(np.float64) / 65536.0
        a, b, c, d = m[0], m[1], m[3], m[4]
        if a * d - b * c < 0:
            raise VideoCorrupt(url, "the display matrix mirrors the picture; mirrored videos are not supported")
        if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
            raise VideoCorrupt(url, "the display matrix is degenerate")
        # av_display_rotation_get() is atan2(b, a) negated (counter-clockwise); clockwise is atan2 itself
        return math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    return 0.0


def _display_rotation(url: str, container, stream) -> int:
    """Clockwise display rotation of ``stream`` in {0, 90, 180, 270}, read as decord 0.6.0 reads it:
    a non-zero ``rotate`` tag first, else the display matrix (from the first decoded frame, where
    FFmpeg attaches the stream's matrix). The container is left positioned after that frame."""
    import av

    tag = (stream.metadata or {}).get("rotate", "")
    if tag and tag != "0":
        try:
            theta = float(tag)
        except ValueError:
            raise VideoCorrupt(url, f"rotate tag {tag!r} is not a number") from None
    else:
        try:
            frame = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise VideoCorrupt(url, f"cannot decode the first frame: {e}") from e
        theta = _matrix_rotation(url, frame) if frame is not None else 0.0
    theta %= 360.0
    deg = int(round(theta / 90.0)) * 90 % 360
    if abs(((theta - deg + 180.0) % 360.0) - 180.0) > 0.5:
        raise VideoCorrupt(url, f"display rotation of {theta:g} degrees is not a multiple of 90")
    return deg


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


def _probe(url: str, source) -> tuple[int, int, int, int]:
    """(coded height, coded width, declared frame count or 0, clockwise display rotation) of the
    first video stream, from the header and the first frame."""
    import av

    try:
        with av.open(source) as c:
            st = c.streams.video[0]
            st.thread_count = 1   # one frame is decoded (for its display matrix): no thread start-up
            h, w, n = int(st.codec_context.height), int(st.codec_context.width), int(st.frames or 0)
            return h, w, n, _display_rotation(url, c, st)
    except (av.FFmpegError, IndexError, OSError) as e:
        raise VideoCorrupt(url, f"cannot open video: {e}") from e


class DecordDecoder(_Rotation):
    """decord.VideoReader with seeks; ``get_batch`` on sorted unique indices.

    decord 0.6.0 applies the display rotation itself (a ``transpose`` filter before RGB conversion);
    its frames are turned further by ``rotation - display_rotation`` to give the requested rotation.
    """

    def __init__(self, url: str, threads: int = 1, rotation: int | None = None):
        import decord

        self.url = url
        self._copy = None
        path = url
        if not sav.is_local(url):
            self._copy = _LocalCopy(url)
            path = self._copy.path
        else:
            path = sav.url_fs(url)[1]
        ch, cw, declared, self.display_rotation = _probe(url, path)
        self._coded = (ch, cw)
        self._decord_size = rotated_size(ch, cw, self.display_rotation)  # decord's own output
        self.set_rotation(rotation)
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
            hint = ""
            if "size must exactly match" in str(e):
                hint = (f" (decord 0.6.0 cannot convert frames {self._decord_size[1]} pixels wide: it infers "
                        "the channel count from the padded row stride; use the pyav backend)")
            raise VideoCorrupt(self.url, f"cannot decode frames {uniq[0]}..{uniq[-1]}: {e}{hint}") from e
        dh, dw = self._decord_size
        if arr.shape != (len(uniq), dh, dw, 3):
            raise VideoCorrupt(self.url, f"decoded shape {arr.shape}, expected {dh}x{dw}")
        arr = rotate(arr, self.rotation - self.display_rotation)
        return _gather(idx, dict(zip(uniq, arr)), self.height, self.width)

    def close(self) -> None:
        self._vr = None
        if self._copy is not None:
            self._copy.close()
            self._copy = None


class PyAVDecoder(_Rotation):
    """PyAV streaming decoder with a packet index (frame number <-> pts, keyframes).

    The index is built once by demuxing (no decoding; the first frame is decoded once to read the
    display rotation); ``get`` decodes forward and seeks only when a keyframe lies between the current
    position and the next wanted frame, and turns the coded pictures by ``rotation``.
    """

    def __init__(self, url: str, threads: int = 1, rotation: int | None = None):
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
        self._coded = (int(cc.height), int(cc.width))
        rate = self._s.average_rate or self._s.guessed_rate
        self.fps = float(rate) if rate else sav.VIDEO_FPS
        try:
            self._seek(0)
            self.display_rotation = _display_rotation(url, self._c, self._s)
        except VideoCorrupt:
            self.close()
            raise
        except av.FFmpegError as e:
            self.close()
            raise VideoCorrupt(url, f"cannot seek to the first frame: {e}") from e
        self.set_rotation(rotation)
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
            if arr.shape != self._coded + (3,):
                raise VideoCorrupt(self.url, f"frame {t} has shape {arr.shape}")
            decoded[t] = rotate(arr, self.rotation)
        return _gather(idx, decoded, self.height, self.width)

    def close(self) -> None:
        c = getattr(self, "_c", None)
        if c is not None:
            c.close()
            self._c = None
        if self._file is not None:
            self._file.close()
            self._file = None


class FrameFolderDecoder(_Rotation):
    """A folder of JPEG frames (``%05d.jpg``) read as a video; frame i is the i-th file by name."""

    def __init__(self, url: str, fps: float = sav.VIDEO_FPS, rotation: int | None = None):
        self.url = url
        self._files = [n for n, t in sav._ls(url) if t != "directory" and n.lower().endswith(JPEG_EXTS)]
        if not self._files:
            raise VideoMissing(url, "frame folder has no JPEG frames")
        self.num_frames = len(self._files)
        self.fps = float(fps)
        self.display_rotation = 0   # JPEG frames are stored as shown (EXIF orientation is not read)
        self._coded = self._read(0).shape[:2]
        self.set_rotation(rotation or 0)

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
            if arr.shape[:2] != self._coded:
                raise VideoCorrupt(sav.join(self.url, self._files[t]), f"frame size {arr.shape[:2]} differs")
            decoded[t] = rotate(arr, self.rotation)
        return _gather(idx, decoded, self.height, self.width)

    def close(self) -> None:
        pass


def open_video(url: str, backend: str = "decord", threads: int = 1, rotation: int | None = None) -> Decoder:
    """Open an mp4 (or a JPEG frame folder) with the named backend.

    ``rotation``: clockwise degrees to turn the coded pictures by; None (default) applies the
    container's display rotation (display-oriented frames), 0 gives the coded pictures.
    Raises VideoMissing when nothing is at ``url``, VideoCorrupt when it cannot be opened.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    _check_rotation(url, rotation)
    fs, path = sav.url_fs(url)
    if not fs.exists(path):
        raise VideoMissing(url, "video does not exist")
    if fs.isdir(path):
        return FrameFolderDecoder(url, rotation=rotation)
    if fs.size(path) == 0:
        raise VideoCorrupt(url, "video file is empty")
    if backend == "decord":
        return DecordDecoder(url, threads=threads, rotation=rotation)
    return PyAVDecoder(url, threads=threads, rotation=rotation)


open = open_video  # noqa: A001  (the documented short name: video.open(url))
