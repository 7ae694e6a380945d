"""MA-V (and other matting data) -> SAM 2's ``BatchedVideoDatapoint``, with soft alpha targets.

Sampling follows SAM 2's video dataset (``VOSDataset`` + ``RandomUniformSampler``): a datapoint is one
video; pick ``num_frames`` consecutive annotated frames (optionally reversed in time), then up to
``max_num_objects`` objects visible on the first of them, at random. In MA-V a sample is one
masklet's segment (<= 12 annotated frames), so the window is cut from a random sample of the video
(the anchor, always one of the objects) and the video's other masklets join when one of their samples
covers the same annotated frames. The frames come from the anchor; each object's alpha from its own
sample. "Visible" = some alpha > 0.5, the threshold the prompts are derived with.

Transforms follow SAM 2's fine-tuning config, the same for frames and alpha: horizontal flip, random
affine (rotation, shear; skipped when the first frame's objects would leave the picture, as SAM 2
does), square resize, then (frames only) consistent colour jitter, grayscale, per-frame jitter, and
SAM 2's normalisation. Alpha is resampled bilinearly and kept soft (SAM 2's own collate casts masks to
bool); SAM2-Matte derives the prompts from it.

Every random choice of draw ``d`` is seeded by (seed, d): the data of a training step depend only on
the step, not on workers, restarts or timing, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
from collections import defaultdict
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

from mava import schema
from mava.loaders import ROW_COLUMNS, SharedCount, choose_indices, vouched_rows
from mava.sample import DECODE_ERRORS, SampleError, decode_sample, has_frames
from mava.schema import Col
from models.sam2_matte.model import IMG_MEAN, PROMPT_THRESHOLD, normalize

log = logging.getLogger(__name__)

VISIBLE = int(PROMPT_THRESHOLD * 255)   # uint8 alpha above this counts as visible
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
FOLDER_FRAMES, FOLDER_ALPHA = "frames", "alpha"
# manifest columns a video's sampling needs, beside those reading a sample needs
MAVA_COLUMNS = (*ROW_COLUMNS, Col.VIDEO_ID, Col.SOURCE, Col.MASKLET_ID, Col.START, Col.ANN_FRAMES)


@dataclass
class SamplerConfig:
    """Frame/object sampling and transforms (defaults: SAM 2.1's fine-tuning config)."""

    num_frames: int = 8
    max_num_objects: int = 3
    reverse_time_prob: float = 0.0
    resolution: int = 1024
    hflip: float = 0.5
    degrees: float = 25.0
    shear: float = 20.0
    jitter: tuple[float, float, float] = (0.1, 0.03, 0.03)         # brightness, contrast, saturation, all frames
    frame_jitter: tuple[float, float, float] = (0.1, 0.05, 0.05)   # the same, drawn per frame
    grayscale: float = 0.05
    max_tries: int = 10   # windows tried before a video counts as having no visible object

    def __post_init__(self):
        if self.num_frames < 1 or self.max_num_objects < 1:
            raise ValueError("num_frames and max_num_objects must be >= 1")


@dataclass
class RawClip:
    """Frames and the alpha of each object, as stored: uint8[T,H,W,3], uint8[T,O,H,W]."""

    frames: np.ndarray
    alpha: np.ndarray
    object_ids: list[int]
    frame_ids: list[int]
    name: str


def visible(alpha_u8: np.ndarray) -> bool:
    return bool((alpha_u8 > VISIBLE).any())


# --- sources --------------------------------------------------------------------------------------


class MavaVideos:
    """The videos of an MA-V split (ok samples of complete shards, optionally a manifest query)."""

    def __init__(self, url: str, query: str | None = None):
        self.url = url
        state, rows, keys, _ = vouched_rows(url, query=query, columns=MAVA_COLUMNS)
        self.split = state.dir
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if keys is None or r[Col.KEY] in keys:
                groups[r[Col.VIDEO_ID]].append(r)
        if not groups:
            raise ValueError(f"{url}: no ok samples in complete shards" + (f" matching {query!r}" if query else ""))
        self.video_ids = sorted(groups)
        self.rows = [sorted(groups[v], key=lambda r: (r[Col.SOURCE], r[Col.MASKLET_ID], r[Col.START]))
                     for v in self.video_ids]
        # SAM 2's integer object id of each masklet (source, id) of a video: its rank in the video
        self.objects = [{m: k for k, m in enumerate(sorted({(r[Col.SOURCE], r[Col.MASKLET_ID]) for r in rows}))}
                        for rows in self.rows]
        self.num_samples = sum(len(r) for r in self.rows)
        first = self.rows[0][0]
        if not has_frames(self.split.row_members(first)):
            raise ValueError(f"{url} has no frames (written with --frames none): SAM2-Matte trains on the frames; "
                             "rerun the job with frames")

    def __len__(self) -> int:
        return len(self.video_ids)

    def _decode(self, row: dict, idx: list[int], fields: tuple[str, ...]):
        shard = self.split.url_of(schema.shard_file(row[Col.SHARD]))
        try:
            members = self.split.row_members(row)
        except (*DECODE_ERRORS, EOFError) as exn:
            raise SampleError(row[Col.KEY], shard, None, f"byte range does not read: {type(exn).__name__}: {exn}") from exn
        return decode_sample(row[Col.KEY], members, idx, fields, shard=shard)

    def sample(self, i: int, cfg: SamplerConfig, rng: np.random.Generator) -> RawClip:
        rows = self.rows[i]
        obj_ids = self.objects[i]
        for _ in range(cfg.max_tries):
            anchor = rows[int(rng.integers(len(rows)))]
            idx = choose_indices(int(anchor[Col.NUM_FRAMES]), cfg.num_frames, rng)
            if rng.random() < cfg.reverse_time_prob:
                idx = idx[::-1]
            ann = [int(anchor[Col.ANN_FRAMES][j]) for j in idx]
            s = self._decode(anchor, idx, ("frames", "alpha"))
            if not visible(s.alpha[0]):
                continue
            mine = (anchor[Col.SOURCE], anchor[Col.MASKLET_ID])
            alphas, ids = [s.alpha], [obj_ids[mine]]
            cover: dict[tuple, dict] = {}
            for r in rows:   # one sample per other masklet that covers the whole window
                m = (r[Col.SOURCE], r[Col.MASKLET_ID])
                if m != mine and m not in cover and set(ann) <= {int(a) for a in r[Col.ANN_FRAMES]}:
                    cover[m] = r
            others = list(cover.values())
            rng.shuffle(others)
            for r in others:
                if len(alphas) >= cfg.max_num_objects:
                    break
                pos = {int(a): j for j, a in enumerate(r[Col.ANN_FRAMES])}
                a = self._decode(r, [pos[x] for x in ann], ("alpha",)).alpha
                if a.shape == s.alpha.shape and visible(a[0]):
                    alphas.append(a)
                    ids.append(obj_ids[(r[Col.SOURCE], r[Col.MASKLET_ID])])
            return RawClip(s.frames, np.stack(alphas, axis=1), ids, ann, self.video_ids[i])
        raise SampleError(self.video_ids[i], self.url, None, f"no window with a visible object in {cfg.max_tries} tries")


class FolderVideos:
    """Image-sequence matting data (one object per clip), the layout most matting sets convert to:
    ``<root>/<clip>/frames/<name>.(jpg|png)`` and ``<root>/<clip>/alpha/<name>.png`` (same names)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url)
        root = root.rstrip("/")
        self.clips: list[tuple[str, list[tuple[str, str]]]] = []
        for d in sorted(p for p in self.fs.ls(root, detail=False) if self.fs.isdir(p)):
            frames = self._images(f"{d}/{FOLDER_FRAMES}")
            alpha = self._images(f"{d}/{FOLDER_ALPHA}")
            pairs = [(frames[k], alpha[k]) for k in sorted(frames) if k in alpha]
            if pairs:
                self.clips.append((posixpath.basename(d), pairs))
        if not self.clips:
            raise ValueError(f"{url}: no clips with {FOLDER_FRAMES}/ and {FOLDER_ALPHA}/ images of the same names")
        self.num_samples = len(self.clips)

    def _images(self, d: str) -> dict[str, str]:
        if not self.fs.isdir(d):
            return {}
        return {posixpath.splitext(posixpath.basename(p))[0]: p for p in self.fs.ls(d, detail=False)
                if p.lower().endswith(IMAGE_EXTS)}

    def __len__(self) -> int:
        return len(self.clips)

    def _read(self, path: str, mode: str) -> np.ndarray:
        try:
            with self.fs.open(path, "rb") as f:
                return np.asarray(Image.open(io.BytesIO(f.read())).convert(mode))
        except (OSError, ValueError, SyntaxError) as exn:
            raise SampleError(path, self.url, None, f"cannot read image: {exn}") from exn

    def sample(self, i: int, cfg: SamplerConfig, rng: np.random.Generator) -> RawClip:
        name, pairs = self.clips[i]
        for _ in range(cfg.max_tries):
            idx = choose_indices(len(pairs), cfg.num_frames, rng)
            if rng.random() < cfg.reverse_time_prob:
                idx = idx[::-1]
            a0 = self._read(pairs[idx[0]][1], "L")
            if not visible(a0):
                continue
            frames = np.stack([self._read(pairs[j][0], "RGB") for j in idx])
            alpha = np.stack([a0] + [self._read(pairs[j][1], "L") for j in idx[1:]])
            if alpha.shape != frames.shape[:3]:
                raise SampleError(name, self.url, None, f"frames {frames.shape[1:3]} and alpha {alpha.shape[1:]} differ")
            return RawClip(frames, alpha[:, None], [0], list(idx), name)
        raise SampleError(name, self.url, None, f"no window with a visible object in {cfg.max_tries} tries")


def open_source(url: str, query: str | None = None):
    """An MA-V split (has ``manifest/``) or an image-sequence matting folder."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise ValueError(f"{url}: no such folder")
    if fs.isdir(f"{root}/manifest"):
        return MavaVideos(url, query)
    if query:
        raise ValueError(f"{url}: --query needs an MA-V split (a folder with manifest/)")
    return FolderVideos(url)


# --- transforms -----------------------------------------------------------------------------------


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,C,H,W] -> float [N,C,size,size] in [0,1] (antialiased bilinear on uint8, as the loaders)."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.float() / 255.0


def _affine_theta(rng: np.random.Generator, cfg: SamplerConfig, h: int, w: int) -> torch.Tensor:
    """grid_sample's theta (output -> input, normalised coords) for a rotation + x-shear about the
    centre in the source's pixel geometry (the picture is stretched to a square afterwards)."""
    a = math.radians(rng.uniform(-cfg.degrees, cfg.degrees))
    sh = math.radians(rng.uniform(-cfg.shear, cfg.shear)) if cfg.shear else 0.0
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shear = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    n = np.diag([w / 2.0, h / 2.0])
    inv = np.linalg.inv(n) @ np.linalg.inv(rot @ shear) @ n
    theta = np.zeros((2, 3))
    theta[:, :2] = inv
    return torch.tensor(theta, dtype=torch.float32)[None]


def _warp(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill is not None:   # outside the source: SAM 2 fills frames with the mean colour
        inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        out = out + (1 - inside) * fill[None, :, None, None]
    return out


def _jitter(x: torch.Tensor, b: float, c: float, s: float, order: np.ndarray) -> torch.Tensor:
    """Brightness, contrast, saturation factors on float [N,3,H,W] in [0,1], applied in `order`."""
    for k in order:
        if k == 0:
            x = x * b
        elif k == 1:
            mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
            x = (x - mean) * c + mean
        else:
            g = _gray(x)
            x = (x - g) * s + g
        x = x.clamp(0.0, 1.0)
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _factors(rng: np.random.Generator, amount: tuple[float, float, float]) -> tuple[float, float, float, np.ndarray]:
    b, c, s = (float(rng.uniform(max(0.0, 1 - a), 1 + a)) if a else 1.0 for a in amount)
    return b, c, s, rng.permutation(3)


def augment(clip: RawClip, cfg: SamplerConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised frames float[T,3,S,S], alpha float[T,O,S,S] in [0,1]); one geometry for both."""
    h, w = clip.frames.shape[1:3]
    img = _resize(torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2), cfg.resolution)
    alpha = _resize(torch.from_numpy(np.ascontiguousarray(clip.alpha)), cfg.resolution)
    if rng.random() < cfg.hflip:
        img, alpha = img.flip(-1), alpha.flip(-1)
    if cfg.degrees or cfg.shear:
        theta = _affine_theta(rng, cfg, h, w)
        warped = _warp(alpha, theta)
        if bool((warped[0].flatten(1).amax(-1) > PROMPT_THRESHOLD).all()):   # every object still visible
            img, alpha = _warp(img, theta, fill=torch.tensor(IMG_MEAN)), warped.clamp(0.0, 1.0)
    if any(cfg.jitter):
        b, c, s, order = _factors(rng, cfg.jitter)
        img = _jitter(img, b, c, s, order)
    if rng.random() < cfg.grayscale:
        img = _gray(img).expand(-1, 3, -1, -1)
    if any(cfg.frame_jitter):
        img = torch.cat([_jitter(img[t:t + 1], *_factors(rng, cfg.frame_jitter)) for t in range(len(img))])
    return normalize(img), alpha


# --- datapoints and batches -----------------------------------------------------------------------


@dataclass
class Datapoint:
    """One video of a batch: img float[T,3,S,S] (normalised), alpha float[T,O,S,S]."""

    img: torch.Tensor
    alpha: torch.Tensor
    object_ids: list[int]
    frame_ids: list[int]
    video: int           # index of the video over all sources (SAM 2's integer video id)
    orig_size: tuple[int, int]


def collate(points: list[Datapoint], dict_key: str = "all") -> BatchedVideoDatapoint:
    """Stack datapoints into SAM 2's batch: img_batch [T,B,3,S,S], masks = soft alpha [T,O,S,S] (all
    objects of all videos), obj_to_frame_idx [T,O,2] = (t, video), metadata (video, object, frame) ids."""
    if not points:
        raise ValueError("empty batch")
    t = {p.img.shape[0] for p in points}
    if len(t) != 1:
        raise ValueError(f"datapoints with different frame counts {sorted(t)}")
    T = t.pop()
    img = torch.stack([p.img for p in points], dim=1)
    masks = torch.cat([p.alpha for p in points], dim=1)
    o2f, ident, sizes = [], [], []
    for b, p in enumerate(points):
        for o, oid in enumerate(p.object_ids):
            o2f.append(torch.stack([torch.arange(T), torch.full((T,), b)], dim=-1))
            ident.append(torch.stack([torch.full((T,), p.video), torch.full((T,), oid), torch.tensor(p.frame_ids)], -1))
            sizes.append(torch.tensor(p.orig_size).expand(T, 2))
    return BatchedVideoDatapoint(
        img_batch=img, obj_to_frame_idx=torch.stack(o2f, dim=1).int(), masks=masks,
        metadata=BatchedVideoMetaData(unique_objects_identifier=torch.stack(ident, dim=1).long(),
                                      frame_orig_size=torch.stack(sizes, dim=1).long()),
        dict_key=dict_key, batch_size=[T])


def clips_to_batch(items: list[dict], resolution: int) -> BatchedVideoDatapoint:
    """``mava.loaders`` clip dicts (StreamingClips / RandomAccessClips items: one masklet each, frames
    and alpha already cut and augmented by their ClipConfig) -> SAM 2's batch with soft alpha."""
    points = []
    for b, it in enumerate(items):
        fr = it["frames"]
        fr = (fr.float() / 255.0) if fr.dtype == torch.uint8 else fr.float()
        a = it["alpha"].float()
        if fr.shape[-2:] != (resolution, resolution):
            fr = F.interpolate(fr, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
            a = F.interpolate(a, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)
        points.append(Datapoint(normalize(fr.clamp(0.0, 1.0)), a, [int(it[Col.MASKLET_ID])],
                                [int(i) for i in it["indices"]], b, tuple(it["frames"].shape[-2:])))
    return collate(points)


class MattingMix(torch.utils.data.Dataset):
    """Draw ``d`` -> a :class:`Datapoint`: a source chosen by weight, a video uniformly in it (with
    replacement), then SAM 2-style sampling and transforms, all seeded by (seed, d).

    ``on_error="skip"`` (default): a damaged sample is logged, counted in ``bad_samples`` and replaced by
    another draw (deterministically); ``"raise"`` raises its :class:`SampleError`.
    """

    def __init__(self, sources: list, weights: list[float] | None, cfg: SamplerConfig, seed: int = 0,
                 on_error: str = "skip"):
        if not sources:
            raise ValueError("no data sources")
        w = np.asarray(weights if weights is not None else [1.0] * len(sources), np.float64)
        if len(w) != len(sources) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"need one non-negative weight per source, not all 0; got {list(w)} for {len(sources)}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.sources, self.p, self.cfg, self.seed, self.on_error = sources, w / w.sum(), cfg, int(seed), on_error
        self.offsets = np.cumsum([0] + [len(s) for s in sources])
        self._bad = SharedCount()

    @property
    def bad_samples(self) -> int:
        return self._bad.value

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def draw(self, d: int, attempt: int = 0) -> tuple[int, int]:
        """(source, video) of draw `d` (another one for each retry `attempt`)."""
        rng = np.random.default_rng([self.seed, int(d), attempt, 0])
        s = int(rng.choice(len(self.sources), p=self.p))
        return s, int(rng.integers(len(self.sources[s])))

    def __getitem__(self, d: int) -> Datapoint:
        err = None
        for attempt in range(self.cfg.max_tries):
            s, i = self.draw(d, attempt)
            rng = np.random.default_rng([self.seed, int(d), attempt, 1])
            try:
                clip = self.sources[s].sample(i, self.cfg, rng)
            except SampleError as exn:
                if self.on_error == "raise":
                    raise
                self._bad.add()
                log.warning("skipped bad sample (draw %d): %s", d, exn)
                err = exn
                continue
            img, alpha = augment(clip, self.cfg, rng)
            return Datapoint(img, alpha, clip.object_ids, clip.frame_ids, int(self.offsets[s]) + i,
                             tuple(clip.frames.shape[1:3]))
        raise SampleError("*", None, None, f"draw {d}: {self.cfg.max_tries} draws in a row failed; last: {err}")


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler of draw numbers: step k on rank r of `world` takes draws
    ``(k*world + r)*batch_size + j``; steps ``start..stop-1`` (resume = start later)."""

    def __init__(self, batch_size: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.b, self.start, self.stop, self.rank, self.world = batch_size, start, stop, rank, world

    def __iter__(self):
        for k in range(self.start, self.stop):
            base = (k * self.world + self.rank) * self.b
            yield list(range(base, base + self.b))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
