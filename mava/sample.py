"""One MA-V sample: reading its tar members (by byte range or by scanning a shard) and decoding them."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mava import schema


class SampleFormatError(ValueError):
    """A sample's members do not follow the MA-V contract."""


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
        return int(self.meta["num_frames"])


def has_frames(ext_map: dict[str, bytes]) -> bool:
    return schema.frame_ext(0) in ext_map


def read_meta(ext_map: dict[str, bytes]) -> dict:
    if schema.META_EXT not in ext_map:
        raise SampleFormatError("sample without metadata json")
    return json.loads(ext_map[schema.META_EXT])


def decode_sample(key: str, ext_map: dict[str, bytes], indices: list[int] | None = None,
                  fields: tuple[str, ...] = ("frames", "alpha", "mask")) -> Sample:
    """Decode the requested `fields` (frames, alpha, mask) at frame positions `indices` (default: all)."""
    meta = read_meta(ext_map)
    n = int(meta["num_frames"])
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if any(i < 0 or i >= n for i in idx):
        raise IndexError(f"{key}: frame positions {idx} outside 0..{n - 1}")
    frames = alpha = masks = None
    if "frames" in fields:
        if not has_frames(ext_map):
            raise MissingFramesError(
                f"sample {key} has no frame JPEGs (written with --frames none); "
                "request only alpha/mask fields or rerun the pipeline with frames")
        frames = np.stack([decode_jpeg(ext_map[schema.frame_ext(i)]) for i in idx])
    if "alpha" in fields:
        alpha = np.stack([decode_png_alpha(ext_map[schema.alpha_ext(i)]) for i in idx])
    if "mask" in fields:
        rles = meta["mask_rles"]
        masks = np.stack([decode_rle(rles[i]) for i in idx])
    return Sample(key, meta, idx, alpha, frames, masks)


def read_sample_bytes(fs, shard_path: str, offset: int, size: int) -> bytes:
    """The byte range of one sample: a single ranged read."""
    buf = fs.cat_file(shard_path, start=int(offset), end=int(offset) + int(size))
    if len(buf) != size:
        raise SampleFormatError(f"short read of {shard_path} at {offset}: {len(buf)} of {size} bytes")
    return buf
