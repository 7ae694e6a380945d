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
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from webdataset import tariterators

from mava import manifest as mf
from mava import schema
from mava.folder import SplitDir, as_split
from mava.schema import Col
from mava.views import subset_keys
from mava.sample import (
    DECODE_ERRORS, SampleError, decode_sample, read_meta,
)

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
        from multiprocessing.context import get_spawning_popen

        return {"v": self._v} if get_spawning_popen() is not None else {"local": self.value}

    def __setstate__(self, state: dict) -> None:
        if "v" in state:
            self._v = state["v"]
        else:
            self.__init__(state["local"])


class _BadSamples:
    """The on_error policy of a loader: raise, or skip, count (``bad_samples``) and log."""

    def __init__(self, on_error: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self._bad = SharedCount()
        self._epoch_start = 0

    @property
    def bad_samples(self) -> int:
        """Samples skipped so far (all epochs, all DataLoader workers)."""
        return self._bad.value

    def _skip(self, exn: Exception, epoch: int) -> None:
        """Count and log one bad sample, or re-raise it under on_error='raise'."""
        if self.on_error == "raise":
            raise exn
        self._bad.add()
        log.warning("epoch %d: skipped bad sample: %s", epoch, exn)

    def _log_epoch(self, epoch: int, skipped: int, who: str) -> None:
        if skipped:
            log.warning("epoch %d: %d bad sample(s) skipped %s (on_error='skip')", epoch, skipped, who)

    def set_epoch(self, epoch: int) -> None:
        total = self.bad_samples
        if epoch != self.epoch:
            self._log_epoch(self.epoch, total - self._epoch_start, "in all workers")
        self._epoch_start = total
        self.epoch = epoch


# --- streaming ------------------------------------------------------------------------------------


def fsspec_opener(data: Iterator[dict], handler=wds.reraise_exception) -> Iterator[dict]:
    """WebDataset stage: open each ``{"url": ...}`` with fsspec (any protocol), add ``stream``."""
    import fsspec

    for sample in data:
        url = sample["url"]
        try:
            f = fsspec.open(url, "rb").open()
        except OSError as exn:  # noqa: PERF203 - handler decides
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break
        sample.update(stream=f)
        try:
            yield sample
        finally:
            f.close()


class StreamingClips(_BadSamples, torch.utils.data.IterableDataset):
    """Streams clips from the shards of a split: WebDataset stages with shard shuffling (same
    permutation on every node), ``split_by_node`` and ``split_by_worker`` over shards, an optional
    key filter (e.g. from a manifest query), a seeded sample shuffle buffer, then decoding.

    Call ``set_epoch(e)`` before each epoch to change the shuffles (DataLoader workers re-pickle
    the dataset each epoch unless persistent).

    ``on_error="raise"`` (default): a damaged sample raises :class:`~mava.sample.SampleError` naming its
    key, shard and member. ``"skip"``: it is skipped, logged, and counted in ``bad_samples`` (summed
    over workers; each worker logs its epoch's count when its shards are done). A tar that cannot be
    read to its end counts once, and its remaining samples are lost for the epoch.
    """

    def __init__(self, split_dir: str | SplitDir, cfg: ClipConfig | None = None, keys: set[str] | None = None,
                 query: str | None = None, shuffle_shards: bool = True, shuffle_buffer: int = 0,
                 epoch: int = 0, on_error: str = "raise", subset: str | None = None):
        _BadSamples.__init__(self, on_error)
        self.split = as_split(split_dir)
        self.cfg = cfg or ClipConfig()
        if query is not None:
            q = set(mf.query_keys(self.split, query))
            keys = q if keys is None else keys & q
        if subset is not None:  # a named view (`mava filter`)
            v = subset_keys(self.split, subset)
            keys = v if keys is None else keys & v
        self.keys = keys
        # only complete shards (done marker written): never a tar an interrupted run left behind
        self.urls = [self.split.url_of(p) for p in self.split.complete_shard_files()]
        if not self.urls:
            raise FileNotFoundError(f"no shards under {self.split.url}")
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.epoch = epoch

    def _shard_list(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(self.cfg.seed * 1_000_003 + self.epoch).shuffle(urls)
        for u in urls:
            yield {"url": u}

    def _filter(self, data: Iterator[dict]) -> Iterator[dict]:
        for s in data:
            if self.keys is None or s[schema.WDS_KEY] in self.keys:
                yield s

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
        skipped = 0
        for s in data:
            key = s[schema.WDS_KEY]
            ext_map = {k: v for k, v in s.items() if not k.startswith("__")}
            try:
                clip = make_clip(key, ext_map, self.cfg, self.epoch, shard=s.get(schema.WDS_URL))
            except SampleError as exn:
                self._skip(exn, self.epoch)
                skipped += 1
                continue
            yield clip
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        self._log_epoch(self.epoch, skipped, f"by worker {worker} of {workers}")

    def _tar_error(self, exn: Exception) -> bool:
        """webdataset handler for a tar that does not read: name it, then raise or skip (count once)."""
        url = next((a for a in exn.args if isinstance(a, str) and "://" in a), None)
        err = SampleError("?", url, None, f"shard does not read to its end: {type(exn).__name__}: {exn}")
        self._skip(err, self.epoch)
        return True

    def pipeline(self) -> wds.DataPipeline:
        return wds.DataPipeline(
            self._shard_list,
            wds.split_by_node,
            wds.split_by_worker,
            fsspec_opener,
            lambda src: tariterators.tar_file_expander(src, handler=self._tar_error),
            tariterators.group_by_keys,
            self._filter,
            self._shuffle,
            self._decode,
        )

    def __iter__(self) -> Iterator[dict]:
        return iter(self.pipeline())


# --- random access --------------------------------------------------------------------------------


class RandomAccessClips(_BadSamples, torch.utils.data.Dataset):
    """Map-style dataset: item i = one ok manifest row, read with one ranged read at
    (tar_offset, tar_size) of its shard through fsspec; no scan of the tar.

    ``bytes_read`` counts bytes fetched by this process (per worker under a DataLoader).

    ``on_error="raise"`` (default): a damaged sample raises :class:`~mava.sample.SampleError` naming its
    key, shard and member. ``"skip"``: item i is replaced by the next readable item (i+1, i+2, ...,
    wrapping), so batches keep their size; each bad one is logged and counted in ``bad_samples``
    (summed over workers; ``set_epoch`` logs the finished epoch's count).
    """

    def __init__(self, split_dir: str | SplitDir, cfg: ClipConfig | None = None, keys: set[str] | None = None,
                 query: str | None = None, epoch: int = 0, on_error: str = "raise", subset: str | None = None):
        _BadSamples.__init__(self, on_error)
        self.split = as_split(split_dir)
        self.cfg = cfg or ClipConfig()
        if query is not None:
            q = set(mf.query_keys(self.split, query))
            keys = q if keys is None else keys & q
        if subset is not None:  # a named view (`mava filter`)
            v = subset_keys(self.split, subset)
            keys = v if keys is None else keys & v
        done = self.split.done_shards()  # only complete shards
        self.rows = [{k: r[k] for k in (Col.KEY, Col.SHARD, Col.TAR_OFFSET, Col.TAR_SIZE, Col.NUM_FRAMES)}
                     for r in mf.ok_rows(self.split, keys) if r[Col.SHARD] in done]
        self.index = {r[Col.KEY]: i for i, r in enumerate(self.rows)}
        self.epoch = epoch
        self.bytes_read = 0

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, i: int) -> dict[str, bytes]:
        """Members (ext -> bytes) of item i; a byte range that does not parse is a SampleError."""
        r = self.rows[i]
        if r[Col.TAR_OFFSET] is None or r[Col.TAR_SIZE] is None:
            raise SampleError(r[Col.KEY], self.split.url_of(schema.shard_file(r[Col.SHARD])), None, "manifest row has no byte range")
        try:
            members = self.split.row_members(r)
            self.bytes_read += r[Col.TAR_SIZE]
            return members
        except SampleError:
            raise
        except (*DECODE_ERRORS, tarfile.TarError, EOFError) as exn:  # incl. SampleFormatError, short reads
            raise SampleError(r[Col.KEY], self.split.url_of(schema.shard_file(r[Col.SHARD])), None,
                              f"byte range {r[Col.TAR_OFFSET]}+{r[Col.TAR_SIZE]} does not read: "
                              f"{type(exn).__name__}: {exn}") from exn

    def _get(self, i: int) -> dict:
        r = self.rows[i]
        return make_clip(r[Col.KEY], self.raw(i), self.cfg, self.epoch, shard=self.split.url_of(schema.shard_file(r[Col.SHARD])))

    def __getitem__(self, i: int) -> dict:
        for k in range(len(self.rows)):
            j = (i + k) % len(self.rows)
            try:
                return self._get(j)
            except SampleError as exn:
                self._skip(exn, self.epoch)
        raise SampleError("*", self.split.url, None, f"no readable sample among {len(self.rows)}")

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
