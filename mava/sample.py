"""One MA-V sample: reading its tar members (by byte range or by scanning a shard) and decoding them."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mava import schema
from mava.schema import Col


class SampleFormatError(ValueError):
    """A sample's members do not follow the MA-V contract."""


class SampleError(SampleFormatError):
    """A sample that cannot be read or decoded; says which key, shard and member."""

    def __init__(self, key: str, shard: str | None, member: str | None, cause: str):
        where = f"sample {key} in shard {shard or '?'}"
        what = f"member {key}.{member}" if member else "sample"
        super().__init__(f"{where}: {what}: {cause}")
        self.key, self.shard, self.member, self.cause = key, shard, member, cause


#: what decoding a damaged member raises (PIL: OSError/UnidentifiedImageError/SyntaxError; json and
#: pycocotools: ValueError; zlib inside PIL: zlib.error; a missing member: KeyError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, KeyError, TypeError, IndexError, zlib.error)


def _member(key: str, ext: str, ext_map: dict[str, bytes], decode, shard: str | None):
    """decode(ext_map[ext]), turning any decoding error into a SampleError naming key, shard and member."""
    if ext not in ext_map:
        raise SampleError(key, shard, ext, "member missing")
    try:
        return decode(ext_map[ext])
    except SampleError:
        raise
    except DECODE_ERRORS as exn:
        raise SampleError(key, shard, ext, f"{type(exn).__name__}: {exn}") from exn


class MissingFramesError(SampleFormatError):
    """Frames were requested from a sample written without frame JPEGs (``--frames none``)."""


def split_member(name: str) -> tuple[str, str]:
    """``key.alpha.03.png`` -> (``key``, ``alpha.03.png``): WebDataset's split at the first dot."""
    base, dot, ext = name.partition(".")
    if not dot:
        raise SampleFormatError(f"tar member without extension: {name!r}")
    return base, ext


def parse_member_bytes(buf: bytes) -> dict[str, bytes]:
    """Members (name -> data) of a byte range that starts at a tar header; no end-of-archive needed."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(buf), mode="r:") as tar:
        for m in tar:
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()
    return out


@dataclass
class TarEntry:
    """One sample as found by scanning a shard: its members and where they lie."""

    key: str
    members: dict[str, bytes]   # ext -> data, in tar order
    offset: int                 # header offset of the first member
    size: int                   # bytes from that header through the padded end of the last member


def scan_tar(f: BinaryIO) -> Iterator[TarEntry]:
    """Walk a shard member by member, grouping consecutive members by key (streaming, no seeks back)."""
    cur: TarEntry | None = None
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, ext = split_member(m.name)
            data = tar.extractfile(m).read()
            end = m.offset_data + ((m.size + 511) // 512) * 512
            if cur is not None and cur.key == key:
                cur.members[ext] = data
                cur.size = end - cur.offset
                continue
            if cur is not None:
                yield cur
            cur = TarEntry(key, {ext: data}, m.offset, end - m.offset)
    if cur is not None:
        yield cur


def member_map(members: dict[str, bytes], key: str) -> dict[str, bytes]:
    """Full member names of one sample -> ext map, checking they all belong to `key`."""
    out = {}
    for name, data in members.items():
        k, ext = split_member(name)
        if k != key:
            raise SampleFormatError(f"byte range of {key} holds a member of {k}")
        out[ext] = data
    return out


def decode_png_alpha(data: bytes) -> np.ndarray:
    """uint8[H,W] from an 8-bit grayscale PNG (PIL: safe in processes that imported decord)."""
    im = Image.open(io.BytesIO(data))
    if im.mode != "L":
        raise SampleFormatError(f"alpha PNG has mode {im.mode}, expected L")
    return np.asarray(im)


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def decode_rle(rle: dict) -> np.ndarray:
    """bool[H,W] from a compressed COCO RLE dict (``counts`` as str or bytes)."""
    counts = rle["counts"]
    r = {"size": [int(rle["size"][0]), int(rle["size"][1])],
         "counts": counts.encode() if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools 2.0.x vs numpy 2 copy-keyword deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(r).astype(bool)


@dataclass
class Sample:
    """A decoded sample restricted to frame positions `indices` (positions within the sample)."""

    key: str
    meta: dict
    indices: list[int]
    alpha: np.ndarray | None        # uint8[N,H,W]
    frames: np.ndarray | None       # uint8[N,H,W,3]
    masks: np.ndarray | None        # bool[N,H,W]

    @property
    def num_frames(self) -> int:
        return int(self.meta[Col.NUM_FRAMES])


def has_frames(ext_map: dict[str, bytes]) -> bool:
    return schema.frame_ext(0) in ext_map


def expected_members(num_frames: int, with_frames: bool) -> list[str]:
    """A sample's member extensions in contract order: json, then per frame its JPEG (when frames are
    stored) and its alpha PNG."""
    out = [schema.META_EXT]
    for i in range(num_frames):
        out += [schema.frame_ext(i), schema.alpha_ext(i)] if with_frames else [schema.alpha_ext(i)]
    return out


def check_members(key: str, ext_map: dict[str, bytes], num_frames: int, shard: str | None = None,
                  num_members: int | None = None) -> None:
    """:class:`SampleError` unless `ext_map` holds exactly a sample's members: the json, an alpha PNG per
    frame and a JPEG per frame or none (and, given the manifest's `num_members`, that many). A sample
    missing any member is bad whatever frames a clip would take from it."""
    with_frames = any(schema.FRAME_EXT_RE.match(e) for e in ext_map)
    want = expected_members(int(num_frames), with_frames)
    missing = [e for e in want if e not in ext_map]
    if missing:
        raise SampleError(key, shard, missing[0], f"member missing ({len(missing)} of the sample's {len(want)} "
                                                  f"members missing: {missing[:4]}{' ...' if len(missing) > 4 else ''})")
    extra = sorted(set(ext_map) - set(want))
    if extra:
        raise SampleError(key, shard, extra[0], f"unexpected member (the sample has {num_frames} frames)")
    if num_members is not None and len(ext_map) != num_members:
        raise SampleError(key, shard, None, f"{len(ext_map)} members, its manifest row says {num_members}")


def _meta(data: bytes) -> dict:
    meta = json.loads(data)
    if not isinstance(meta, dict) or Col.NUM_FRAMES not in meta:
        raise ValueError("not a sample metadata object (no num_frames)")
    int(meta[Col.NUM_FRAMES])
    return meta


def read_meta(ext_map: dict[str, bytes], key: str = "?", shard: str | None = None) -> dict:
    """The sample's metadata json; a SampleError (naming key, shard, member) when absent or garbled."""
    return _member(key, schema.META_EXT, ext_map, _meta, shard)


def decode_sample(key: str, ext_map: dict[str, bytes], indices: list[int] | None = None,
                  fields: tuple[str, ...] = ("frames", "alpha", "mask"), shard: str | None = None) -> Sample:
    """Decode the requested `fields` (frames, alpha, mask) at frame positions `indices` (default: all).

    A damaged or missing member (any of the sample's, not only the requested ones) raises
    :class:`SampleError` naming the key, `shard` and member."""
    meta = read_meta(ext_map, key, shard)
    n = int(meta[Col.NUM_FRAMES])
    check_members(key, ext_map, n, shard)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if any(i < 0 or i >= n for i in idx):
        raise IndexError(f"{key}: frame positions {idx} outside 0..{n - 1}")
    frames = alpha = masks = None
    if "frames" in fields:
        if not has_frames(ext_map):
            raise MissingFramesError(
                f"sample {key} has no frame JPEGs (written with --frames none); "
                "request only alpha/mask fields or rerun the pipeline with frames")
        frames = _stack(key, shard, [_member(key, schema.frame_ext(i), ext_map, decode_jpeg, shard) for i in idx])
    if "alpha" in fields:
        alpha = _stack(key, shard, [_member(key, schema.alpha_ext(i), ext_map, decode_png_alpha, shard)
                                    for i in idx])
    if "mask" in fields:
        masks = _stack(key, shard, [_mask(key, meta, i, shard) for i in idx])
    return Sample(key, meta, idx, alpha, frames, masks)


def _mask(key: str, meta: dict, i: int, shard: str | None) -> np.ndarray:
    try:
        return decode_rle(meta[schema.META_MASK_RLES][i])
    except DECODE_ERRORS as exn:
        raise SampleError(key, shard, schema.META_EXT, f"mask_rles[{i}]: {type(exn).__name__}: {exn}") from exn


def _stack(key: str, shard: str | None, arrays: list[np.ndarray]) -> np.ndarray:
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise SampleError(key, shard, None, f"frames of different sizes {shapes}")
    return np.stack(arrays)


def read_sample_bytes(fs, shard_path: str, offset: int, size: int) -> bytes:
    """The byte range of one sample: a single ranged read."""
    buf = fs.cat_file(shard_path, start=int(offset), end=int(offset) + int(size))
    if len(buf) != size:
        raise SampleFormatError(f"short read of {shard_path} at {offset}: {len(buf)} of {size} bytes")
    return buf
