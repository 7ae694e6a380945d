"""Test-only MA-V shard builder following the output contract exactly, with checkable content.

Content: alpha is a soft-edged square moving 2 px per frame; the frame JPEG's red channel equals the
alpha (so frame/alpha alignment survives any crop), green is a ramp in x, blue a ramp in y. The input
mask is alpha > 0.5 shifted by one pixel. Used where a test crafts content the pipeline cannot produce
(exact frame/alpha alignment, samples without an ok row, truncated shards).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils

from mava import schema


def alpha_frame(t: int, h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + (seed % 5) - 2, w / 3 + 2 * t + (seed % 3)
    d = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    return np.clip((h / 4 - d) / 3.0, 0, 1)


def make_sample(key: str, t_len: int, h: int, w: int, seed: int, with_frames: bool):
    alphas = [alpha_frame(t, h, w, seed) for t in range(t_len)]
    a8 = [np.round(a * 255).astype(np.uint8) for a in alphas]
    masks = [np.roll(a > 0.5, 1, axis=1) for a in alphas]
    rles = []
    for m in masks:
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rles.append({"size": [int(x) for x in r["size"]], "counts": r["counts"].decode()})
    frames = []
    if with_frames:
        yy, xx = np.mgrid[0:h, 0:w]
        for a in a8:
            rgb = np.stack([a, (xx * 255 // max(1, w - 1)).astype(np.uint8),
                            (yy * 255 // max(1, h - 1)).astype(np.uint8)], -1)
            frames.append(rgb)
    return a8, frames, masks, rles


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a, "L").save(b, format="PNG")
    return b.getvalue()


def _jpg(rgb: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(b, format="JPEG", quality=100, subsampling=0)
    return b.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
    tar.addfile(ti, io.BytesIO(data))


def build_split(out: Path, split: str = "synth", shards: int = 2, per_shard: int = 3, t_len: int = 5,
                h: int = 24, w: int = 32, with_frames: bool = True, failed_per_shard: int = 1,
                matter: str = "mask") -> Path:
    """Write ``out/split`` with `shards` shards of `per_shard` ok samples and failed rows; return the dir."""
    d = Path(out) / split
    for sub in ("shards", "manifest", "done"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    vid_counter = 0
    for s in range(shards):
        name = schema.shard_name(split, s)
        rows = []
        with tarfile.open(d / schema.shard_tar(split, s), "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard + failed_per_shard):
                vid = f"vid_{vid_counter:06d}"
                vid_counter += 1
                seg_start = 4 * i
                key = schema.sample_key(vid, "manual", i, seg_start)
                ann = list(range(seg_start, seg_start + t_len))
                base = dict(key=key, shard=name, video_id=vid, source="manual", masklet_id=i, start=seg_start,
                            num_frames=t_len, ann_frames=ann, video_frames=[4 * a for a in ann], overlap=0,
                            height=h, width=w, matter=matter)
                if i >= per_shard:
                    rows.append({**base, "status": schema.STATUS_FAILED, "error_type": "EmptyMasklet",
                                 "error": "masklet never visible"})
                    continue
                a8, frames, masks, rles = make_sample(key, t_len, h, w, seed=vid_counter, with_frames=with_frames)
                meta = {f: base[f] for f in schema.META_FIELDS if f in base}
                meta["mask_rles"] = rles
                offset = tar.offset
                _add(tar, f"{key}.{schema.META_EXT}", json.dumps(meta).encode())
                for t in range(t_len):
                    if with_frames:
                        _add(tar, f"{key}.{schema.frame_ext(t)}", _jpg(frames[t]))
                    _add(tar, f"{key}.{schema.alpha_ext(t)}", _png(a8[t]))
                alpha = np.stack(a8) / 255.0
                m = np.stack(masks)
                rows.append({**base, "status": schema.STATUS_OK, "error_type": None, "error": None,
                             "mean_alpha": float(alpha.mean()),
                             "semi_fraction": float(((alpha > schema.SEMI_LO) & (alpha < schema.SEMI_HI)).mean()),
                             "mask_iou": float(((alpha > 0.5) & m).sum() / max(1, ((alpha > 0.5) | m).sum())),
                             "mask_area": float(m.mean()), "tar_offset": offset, "tar_size": tar.offset - offset,
                             "num_members": 1 + t_len * (2 if with_frames else 1)})
        full = [{c: r.get(c) for c in schema.MANIFEST_COLUMNS} for r in rows]
        pq.write_table(pa.Table.from_pylist(full, schema=schema.MANIFEST_SCHEMA), d / schema.shard_manifest(split, s))
        (d / schema.shard_done(split, s)).write_text(json.dumps({"shard": name, "ok": per_shard,
                                                                  "failed": failed_per_shard}))
    (d / schema.RUN_JSON).write_text(json.dumps({"split": split, "matter": matter}))
    return d
