"""Training loaders for MA-V: a streaming WebDataset pipeline and a random-access map-style Dataset.

Both yield the same clip dict for the same key and epoch (the random choices are seeded by
(seed, epoch, key)), so they are interchangeable:

    {"key": str, "video_id": str, "masklet_id": int, "indices": LongTensor[N] (positions in the sample),
     "frames": uint8 or float Tensor[N,3,H,W], "alpha": float Tensor[N,1,H,W] in [0,1],
     "mask": float Tensor[N,1,H,W] in {0,1}}

``sam2_collate`` turns a list of clips into SAM-2-style batches (time first).
"""

from __future__ import annotations

import logging
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from mava import manifest as mf
from mava import schema
from mava.folder import SplitDir
from mava.schema import Col
from mava.views import subset_keys
from mava.sample import (
    DECODE_ERRORS, SampleError, SampleFormatError, check_members, decode_sample, read_meta, scan_tar,
)
from mava.state import inspect_split, vouched_manifest

log = logging.getLogger(__name__)

FIELDS = ("frames", "alpha", "mask")


@dataclass
class ClipConfig:
    """How a clip is cut from a sample and transformed.

    clip_len: frames per clip (None: all frames of the sample). A random contiguous window when
        the sample is longer; when it is shorter, positions are repeated (evenly spread).
    size: output (H, W); None keeps the source resolution (then batches need equal-sized sources).
    crop_scale: range of the crop's area fraction; the crop has the aspect of `size` and a random
        position, then is resized to `size`. (1, 1) with a matching aspect = plain resize.
    hflip: probability of a horizontal flip.
    fields: which of frames/alpha/mask to decode (alpha only works on ``--frames none`` shards).
    float_frames: frames as float in [0,1] instead of uint8.
    seed: base seed; the clip of a key in an epoch depends only on (seed, epoch, key).
    """

    clip_len: int | None = None
    size: tuple[int, int] | None = None
    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: float = 0.0
    fields: tuple[str, ...] = FIELDS
    float_frames: bool = False
    seed: int = 0

    def __post_init__(self):
        bad = set(self.fields) - set(FIELDS)
        if bad or not self.fields:
            raise ValueError(f"fields must be a non-empty subset of {FIELDS}, got {self.fields}")


def clip_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def choose_indices(n: int, clip_len: int | None, rng: np.random.Generator) -> list[int]:
    if clip_len is None or clip_len == n:
        return list(range(n))
    if clip_len < n:
        s = int(rng.integers(0, n - clip_len + 1))
        return list(range(s, s + clip_len))
    return [int(round(x)) for x in np.linspace(0, n - 1, clip_len)]


def crop_box(h: int, w: int, cfg: ClipConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw) of the crop in source pixels."""
    if cfg.size is None and cfg.crop_scale == (1.0, 1.0):
        return 0, 0, h, w
    th, tw = cfg.size if cfg.size is not None else (h, w)
    aspect = tw / th
    frac = float(rng.uniform(*cfg.crop_scale))
    # largest box of the target aspect inside the source, scaled by sqrt(area fraction)
    bh = min(h, w / aspect)
    ch = max(1, int(round(bh * np.sqrt(frac))))
    cw = max(1, min(w, int(round(ch * aspect))))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def transform(t: dict[str, torch.Tensor], cfg: ClipConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Crop, resize and flip frames/alpha/mask ([N,C,H,W] each) with the same random box."""
    any_t = next(iter(t.values()))
    h, w = any_t.shape[-2:]
    y0, x0, ch, cw = crop_box(h, w, cfg, rng)
    flip = bool(rng.random() < cfg.hflip)
    out = {}
    for name, x in t.items():
        x = x[..., y0:y0 + ch, x0:x0 + cw]
        if cfg.size is not None and (ch, cw) != tuple(cfg.size):
            if name == "mask":
                x = F.interpolate(x, size=cfg.size, mode="nearest")
            elif x.dtype == torch.uint8:
                # torch's uint8 antialiased bilinear: ~10x faster than going through float, rounds
                # and saturates itself (within 1 level of the float path)
                x = F.interpolate(x, size=cfg.size, mode="bilinear", align_corners=False, antialias=True)
            else:
                x = F.interpolate(x, size=cfg.size, mode="bilinear", align_corners=False, antialias=True)
                x = x.clamp(0.0, 1.0)  # antialiased bilinear can overshoot
        if flip:
            x = x.flip(-1)
        out[name] = x.contiguous()
    return out


def make_clip(key: str, ext_map: dict[str, bytes], cfg: ClipConfig, epoch: int = 0, shard: str | None = None) -> dict:
    """Decode and transform one sample (members ext -> bytes) into a clip dict.

    A damaged sample raises :class:`SampleError` naming the key, `shard` and member."""
    rng = clip_rng(cfg.seed, epoch, key)
    n = int(read_meta(ext_map, key, shard)[Col.NUM_FRAMES])
    idx = choose_indices(n, cfg.clip_len, rng)
    s = decode_sample(key, ext_map, idx, cfg.fields, shard=shard)
    shapes = {x.shape[1:3] for x in (s.frames, s.alpha, s.masks) if x is not None}
    if len(shapes) > 1:
        raise SampleError(key, shard, None, f"frames, alpha and masks of different sizes {sorted(shapes)}")
    t: dict[str, torch.Tensor] = {}
    if s.frames is not None:
        t["frames"] = torch.from_numpy(s.frames).permute(0, 3, 1, 2)
    if s.alpha is not None:  # 8-bit through the transform (as stored), float in [0,1] after
        t["alpha"] = torch.from_numpy(s.alpha)[:, None]
    if s.masks is not None:
        t["mask"] = torch.from_numpy(s.masks)[:, None].to(torch.uint8)
    t = transform(t, cfg, rng)
    if "alpha" in t:
        t["alpha"] = t["alpha"].float() / 255.0
    if "mask" in t:
        t["mask"] = t["mask"].float()
    if "frames" in t and cfg.float_frames:
        t["frames"] = t["frames"].float() / 255.0
    return {"key": key, "video_id": s.meta[Col.VIDEO_ID], "masklet_id": int(s.meta[Col.MASKLET_ID]),
            "indices": torch.tensor(idx, dtype=torch.long), **t}


# --- bad samples ----------------------------------------------------------------------------------

ON_ERROR = ("raise", "skip")


def _spawning() -> bool:
    from multiprocessing.context import get_spawning_popen

    return get_spawning_popen() is not None


class SharedCount:
    """A counter shared by a dataset and its DataLoader worker processes (fork or spawn).

    Pickled while a worker process is being started, it stays shared; pickled any other way (a copy,
    another framework), the copy counts on its own.
    """

    def __init__(self, value: int = 0):
        import multiprocessing as mp

        self._v = mp.Value("q", value)

    @property
    def value(self) -> int:
        return int(self._v.value)

    def add(self, n: int = 1) -> None:
        with self._v.get_lock():
            self._v.value += n

    def __getstate__(self) -> dict:
        return {"v": self._v} if _spawning() else {"local": self.value}

    def __setstate__(self, state: dict) -> None:
        if "v" in state:
            self._v = state["v"]
        else:
            self.__init__(state["local"])


class SharedFlags:
    """One flag per item, shared like :class:`SharedCount`: which items were already counted bad."""

    def __init__(self, n: int):
        import multiprocessing as mp

        self._a = mp.Array("b", max(1, n))

    def mark(self, i: int) -> bool:
        """Set flag i; True when it was not set yet."""
        with self._a.get_lock():
            if self._a[i]:
                return False
            self._a[i] = 1
            return True

    def clear(self) -> None:
        with self._a.get_lock():
            self._a[:] = bytes(len(self._a))

    def __getstate__(self) -> dict:
        return {"a": self._a} if _spawning() else {"local": bytes(self._a[:])}

    def __setstate__(self, state: dict) -> None:
        if "a" in state:
            self._a = state["a"]
        else:
            self.__init__(len(state["local"]))
            self._a[:] = state["local"]


class _BadSamples:
    """The on_error policy of a loader: raise, or skip, count (``bad_samples``) and log. A bad sample is
    counted once per epoch, whoever (which DataLoader worker, which item) meets it."""

    def __init__(self, on_error: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self._bad = SharedCount()
        self._epoch_start = 0
        self._skipped_here = 0  # this process's skips in the current pass (for its log line)

    @property
    def bad_samples(self) -> int:
        """Samples skipped so far (all epochs, all DataLoader workers), each once per epoch."""
        return self._bad.value

    def _skip(self, exn: Exception, epoch: int, count: bool = True) -> None:
        """Count and log one bad sample, or re-raise it under on_error='raise'. ``count=False``: log
        only (already counted, or not a sample of the dataset)."""
        if self.on_error == "raise":
            raise exn
        if count:
            self._bad.add()
            self._skipped_here += 1
        log.warning("epoch %d: skipped bad sample: %s", epoch, exn)

    def _log_epoch(self, epoch: int, skipped: int, who: str) -> None:
        if skipped:
            log.warning("epoch %d: %d bad sample(s) skipped %s (on_error='skip')", epoch, skipped, who)

    def _new_epoch(self) -> None:
        """Hook: forget what was counted in the finished epoch."""

    def set_epoch(self, epoch: int) -> None:
        total = self.bad_samples
        if epoch != self.epoch:
            self._log_epoch(self.epoch, total - self._epoch_start, "in all workers")
            self._new_epoch()
        self._epoch_start = total
        self.epoch = epoch


ROW_COLUMNS = (Col.KEY, Col.SHARD, Col.TAR_OFFSET, Col.TAR_SIZE, Col.NUM_FRAMES, Col.NUM_MEMBERS)
"""The manifest columns the loaders keep of each ok row (what reading and vouching for a sample need)."""


def vouched_rows(split_dir: str | SplitDir, keys: set[str] | None = None, query: str | None = None,
                 subset: str | None = None, columns: Sequence[str] = ROW_COLUMNS):
    """(split state, ok rows of its finished shards that the manifest vouches for (`columns` of each),
    wanted keys or None for all, keys of duplicate rows -> their shards).

    The wanted keys are `keys` narrowed by a manifest `query` and a named view `subset`; the rows are not
    filtered by them. :class:`~mava.state.NotASplit` for a path that is not a split or has no finished
    shard; an unreadable finished manifest raises :class:`~mava.folder.UnreadableFile`."""
    st = inspect_split(split_dir, need_finished=True)
    if st.unfinished:
        log.warning("%s: %d shard(s) without a done marker left out (unfinished): %s", st.url, len(st.unfinished),
                    st.unfinished[:5])
    v = vouched_manifest(st)
    if v.unreadable:
        raise v.unreadable[0]
    if query is not None:
        q = set(mf.query_keys(st.dir, query))
        keys = q if keys is None else keys & q
    if subset is not None:  # a named view (`mava filter`)
        view = subset_keys(st.dir, subset)
        keys = view if keys is None else keys & view
    cols = list(dict.fromkeys([*columns, Col.STATUS]))
    rows = [r for r in v.table.select(cols).to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    if Col.STATUS not in columns:
        for r in rows:
            del r[Col.STATUS]
    return st, rows, keys, v.duplicates


def _vouch(key: str, members: dict[str, bytes], row: dict, shard: str, at: tuple[int, int] | None = None) -> None:
    """SampleError unless a sample's members (and, from a scan, its byte range `at`) are what its manifest
    row records: offset, size, member count, every member of every frame."""
    check_members(key, members, row[Col.NUM_FRAMES] or 0, shard, row[Col.NUM_MEMBERS])
    if at is not None and at != (row[Col.TAR_OFFSET], row[Col.TAR_SIZE]):
        raise SampleError(key, shard, None, f"found at bytes {at[0]}+{at[1]}, its manifest row says "
                          f"{row[Col.TAR_OFFSET]}+{row[Col.TAR_SIZE]}: the tar is not the one its manifest describes")


# --- streaming ------------------------------------------------------------------------------------


def _scan(url: str, errors: list[Exception]) -> Iterator:
    """The samples of a tar (:func:`~mava.sample.scan_tar`) until it ends or stops reading; why it
    stopped goes to `errors` (a bad tar is the reader's to report, per sample)."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            yield from scan_tar(f)
    except (OSError, EOFError, tarfile.TarError, SampleFormatError) as exn:
        errors.append(exn)


class StreamingClips(_BadSamples, torch.utils.data.IterableDataset):
    """Streams clips from the finished shards of a split: WebDataset stages with shard shuffling (same
    permutation on every node), ``split_by_node`` and ``split_by_worker`` over shards, an optional key
    filter (e.g. from a manifest query), a seeded sample shuffle buffer, then decoding.

    Only what the manifest vouches for is served: each tar is scanned against its shard's manifest
    rows, and a sample whose key, byte range, member count or members differ from its row is bad; a
    row whose sample the tar does not hold (a swapped or truncated tar) is bad; tar entries that no row
    of the shard describes are never served; a key is served once (a key in two finished shards, from
    the first).

    Call ``set_epoch(e)`` before each epoch to change the shuffles (DataLoader workers re-pickle
    the dataset each epoch unless persistent).

    ``on_error="raise"`` (default): a bad sample raises :class:`~mava.sample.SampleError` naming its
    key, shard and member. ``"skip"``: it is skipped, logged, and counted once in ``bad_samples``
    (summed over workers; each worker logs its epoch's count when its shards are done).
    A path that is not an MA-V split, or one without a finished shard, raises
    :class:`~mava.state.NotASplit`.
    """

    def __init__(self, split_dir: str | SplitDir, cfg: ClipConfig | None = None, keys: set[str] | None = None,
                 query: str | None = None, shuffle_shards: bool = True, shuffle_buffer: int = 0,
                 epoch: int = 0, on_error: str = "raise", subset: str | None = None):
        _BadSamples.__init__(self, on_error)
        st, rows, keys, dups = vouched_rows(split_dir, keys, query, subset)
        self.split = st.dir
        self.cfg = cfg or ClipConfig()
        self.keys = keys
        self._rows: dict[str, dict[str, dict]] = {}   # shard -> key -> its ok row
        for r in rows:
            self._rows.setdefault(r[Col.SHARD], {})[r[Col.KEY]] = r
        self._dups = {k: set(v) for k, v in dups.items()}
        # only finished shards (a done marker), and only those holding a wanted sample
        self.urls = [self.split.url_of(schema.shard_file(s)) for s in st.finished
                     if any(keys is None or k in keys for k in self._rows.get(s, ()))]
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.epoch = epoch

    def _shard_list(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(self.cfg.seed * 1_000_003 + self.epoch).shuffle(urls)
        for u in urls:
            yield {"url": u}

    def _samples(self, data: Iterator[dict]) -> Iterator[dict]:
        """Scan each shard's tar against its manifest rows; yield the vouched samples (WebDataset dicts)."""
        for item in data:
            url = item["url"]
            shard = schema.file_shard(url)
            rows = self._rows.get(shard, {})
            seen: set[str] = set()
            foreign: list[str] = []
            errors: list[Exception] = []
            for e in _scan(url, errors):
                row = rows.get(e.key)
                if row is None:
                    if shard in self._dups.get(e.key, ()):
                        continue  # a duplicate key: served from its first shard only
                    foreign.append(e.key)
                    self._skip(SampleError(e.key, url, None, "in the tar, but no ok row of the shard's manifest "
                                           "has this key: the tar is not the one its manifest describes"),
                               self.epoch, count=False)
                    continue
                if e.key in seen:
                    continue  # never served twice
                seen.add(e.key)
                if self.keys is not None and e.key not in self.keys:
                    continue
                try:
                    _vouch(e.key, e.members, row, url, (e.offset, e.size))
                except SampleError as exn:
                    self._skip(exn, self.epoch)
                    continue
                yield {schema.WDS_KEY: e.key, schema.WDS_URL: url, **e.members}
            broken = (f"not reached: the tar does not read to its end ({type(errors[0]).__name__}: {errors[0]})"
                      if errors else None)
            for key in rows:
                if key not in seen and (self.keys is None or key in self.keys):
                    self._skip(SampleError(key, url, None, broken or "not in the shard's tar: the tar is not the "
                                           "one its manifest describes"), self.epoch)
            if foreign:
                log.warning("%s: %d sample(s) in the tar that its manifest does not describe were not served "
                            "(first: %s)", url, len(foreign), foreign[0])

    def _shuffle(self, data: Iterator[dict]) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from data
            return
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        rng = random.Random(hash((self.cfg.seed, self.epoch, rank, worker)))
        buf: list[dict] = []
        for s in data:
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _decode(self, data: Iterator[dict]) -> Iterator[dict]:
        for s in data:
            key = s[schema.WDS_KEY]
            ext_map = {k: v for k, v in s.items() if not k.startswith("__")}
            try:
                clip = make_clip(key, ext_map, self.cfg, self.epoch, shard=s.get(schema.WDS_URL))
            except SampleError as exn:
                self._skip(exn, self.epoch)
                continue
            yield clip
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        self._log_epoch(self.epoch, self._skipped_here, f"by worker {worker} of {workers}")

    def pipeline(self) -> wds.DataPipeline:
        return wds.DataPipeline(
            self._shard_list,
            wds.split_by_node,
            wds.split_by_worker,
            self._samples,
            self._shuffle,
            self._decode,
        )

    def __iter__(self) -> Iterator[dict]:
        self._skipped_here = 0
        return iter(self.pipeline())


# --- random access --------------------------------------------------------------------------------


class RandomAccessClips(_BadSamples, torch.utils.data.Dataset):
    """Map-style dataset: item i = one ok manifest row of a finished shard, read with one ranged read at
    (tar_offset, tar_size) of its shard through fsspec; no scan of the tar. The bytes must be exactly
    the sample the row describes (its members, all of them, and no other key's), else it is bad; a key
    in two finished shards is one item.

    ``bytes_read`` counts bytes fetched by this process (per worker under a DataLoader).

    ``on_error="raise"`` (default): a bad sample raises :class:`~mava.sample.SampleError` naming its
    key, shard and member. ``"skip"``: item i is replaced by the next readable item (i+1, i+2, ...,
    wrapping), so batches keep their size; each bad one is logged and counted once per epoch in
    ``bad_samples`` (summed over workers; ``set_epoch`` logs the finished epoch's count). A path that is
    not an MA-V split, or one without a finished shard, raises :class:`~mava.state.NotASplit`.
    """

    def __init__(self, split_dir: str | SplitDir, cfg: ClipConfig | None = None, keys: set[str] | None = None,
                 query: str | None = None, epoch: int = 0, on_error: str = "raise", subset: str | None = None):
        _BadSamples.__init__(self, on_error)
        st, rows, keys, _ = vouched_rows(split_dir, keys, query, subset)
        self.split = st.dir
        self.cfg = cfg or ClipConfig()
        self.rows = [r for r in rows if keys is None or r[Col.KEY] in keys]
        self.index = {r[Col.KEY]: i for i, r in enumerate(self.rows)}
        self.epoch = epoch
        self.bytes_read = 0
        self._counted = SharedFlags(len(self.rows))   # bad items counted this epoch (all workers)
        self._bad_here: set[int] = set()              # bad items this process met this epoch

    def _new_epoch(self) -> None:
        self._counted.clear()
        self._bad_here = set()

    def __len__(self) -> int:
        return len(self.rows)

    def _url(self, r: dict) -> str:
        return self.split.url_of(schema.shard_file(r[Col.SHARD]))

    def raw(self, i: int) -> dict[str, bytes]:
        """Members (ext -> bytes) of item i; a byte range that does not parse, or does not hold exactly
        the row's sample, is a SampleError."""
        r = self.rows[i]
        if r[Col.TAR_OFFSET] is None or r[Col.TAR_SIZE] is None:
            raise SampleError(r[Col.KEY], self._url(r), None, "manifest row has no byte range")
        try:
            members = self.split.row_members(r)
            self.bytes_read += r[Col.TAR_SIZE]
        except SampleError:
            raise
        except (*DECODE_ERRORS, tarfile.TarError, EOFError) as exn:  # incl. SampleFormatError, short reads
            raise SampleError(r[Col.KEY], self._url(r), None,
                              f"byte range {r[Col.TAR_OFFSET]}+{r[Col.TAR_SIZE]} does not read: "
                              f"{type(exn).__name__}: {exn}") from exn
        _vouch(r[Col.KEY], members, r, self._url(r))
        return members

    def _get(self, i: int) -> dict:
        r = self.rows[i]
        return make_clip(r[Col.KEY], self.raw(i), self.cfg, self.epoch, shard=self._url(r))

    def __getitem__(self, i: int) -> dict:
        n = len(self.rows)
        for k in range(n):
            j = (i + k) % n
            if j in self._bad_here:
                continue
            try:
                return self._get(j)
            except SampleError as exn:
                self._skip(exn, self.epoch, count=self.on_error == "skip" and self._counted.mark(j))
                self._bad_here.add(j)  # (skip mode: not read again this epoch in this process)
        raise SampleError("*", self.split.url, None, f"no readable sample among {n}")

    def by_key(self, key: str) -> dict:
        return self[self.index[key]]


# --- SAM-2-style batches --------------------------------------------------------------------------


@dataclass
class Sam2Batch:
    """Time-first batch as SAM 2's training stack expects; one object per clip (O == B here).

    images: float[T,B,3,H,W] in [0,1]; alpha: float[T,O,H,W]; masks: bool[T,O,H,W] (input masks);
    obj_to_frame_idx: int[T,O,2] = (frame t, batch b) of each object; object_ids: int[O] masklet ids;
    keys / video_ids: per clip.
    """

    images: torch.Tensor | None
    alpha: torch.Tensor | None
    masks: torch.Tensor | None
    obj_to_frame_idx: torch.Tensor
    object_ids: torch.Tensor
    keys: list[str] = field(default_factory=list)
    video_ids: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.obj_to_frame_idx.shape[0])


def sam2_collate(items: list[dict]) -> Sam2Batch:
    """Stack clips of equal length and size into a :class:`Sam2Batch`."""
    if not items:
        raise ValueError("empty batch")
    lens = {len(it["indices"]) for it in items}
    if len(lens) != 1:
        raise ValueError(f"clips of different lengths {sorted(lens)}: set ClipConfig.clip_len")

    def stack(name: str) -> torch.Tensor | None:
        if name not in items[0]:
            return None
        shapes = {tuple(it[name].shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"{name} of different shapes {sorted(shapes)}: set ClipConfig.size")
        return torch.stack([it[name] for it in items], dim=1)  # [T,B,C,H,W]

    frames = stack("frames")
    if frames is not None and frames.dtype == torch.uint8:
        frames = frames.float() / 255.0
    alpha, mask = stack("alpha"), stack("mask")
    t, b = len(items[0]["indices"]), len(items)
    o2f = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(b), indexing="ij"), dim=-1).int()
    return Sam2Batch(
        images=frames,
        alpha=alpha[:, :, 0] if alpha is not None else None,
        masks=mask[:, :, 0].bool() if mask is not None else None,
        obj_to_frame_idx=o2f,
        object_ids=torch.tensor([it[Col.MASKLET_ID] for it in items], dtype=torch.long),
        keys=[it[Col.KEY] for it in items],
        video_ids=[it[Col.VIDEO_ID] for it in items],
    )
