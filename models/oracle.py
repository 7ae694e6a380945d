"""The ``oracle`` matter: ground-truth alpha of a synthetic split, optionally damaged on purpose.

For checking what judges mattes (QC scores, evaluation) with the real job: ``pipeline.synth`` writes
the ground truth of every object at every annotated frame under ``gt_alpha/`` (``mava eval``'s layout,
``<video_id>/<masklet_id:03d>/<annotated frame:05d>.png``); this matter returns it for each segment, so
an undamaged run writes the ground truth itself, and ``oracle_damage`` / ``oracle_strength`` damage it
with :func:`mava.degrade.damage_alpha` (seeded by the sample key: reruns write the same bytes, and a
damage grows monotonically with its strength)::

    python -m pipeline.run --split sav_train --data-root data --matter oracle \\
        --checkpoint data/sav_train/gt_alpha --oracle-damage leak --oracle-strength 0.5

``--checkpoint`` names the ground-truth folder; its identity in the fingerprint (``weights_sha256``) is
the sha256 of ``synth_meta.json`` beside it (the specs the ground truth was rendered from), else of the
folder's file listing with sizes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from typing import Sequence

import fsspec
import numpy as np
from PIL import Image

from mava import degrade, schema
from models.base import MatterBase, MatterConfig, to_uint8

META_FILE = "synth_meta.json"   # pipeline.synth.META_FILE (models must not import pipeline)


def gt_png_path(root: str, video_id: str, masklet_id: int, ann_frame: int) -> str:
    """Where the ground truth of one object at one annotated frame lies (``mava eval``'s layout)."""
    return f"{root.rstrip('/')}/{video_id}/{int(masklet_id):03d}/{int(ann_frame):05d}.png"


class OracleMatter(MatterBase):
    """Ground-truth alpha from ``cfg.checkpoint`` (a ``gt_alpha/`` folder), damaged as configured."""

    name = "oracle"
    deterministic = True
    reads = ("oracle_damage", "oracle_strength")

    def __init__(self, cfg: MatterConfig | None = None):
        self.cfg = cfg or MatterConfig()
        if not self.cfg.checkpoint:
            raise ValueError("the oracle matter needs --checkpoint: the ground-truth folder (gt_alpha/ of a "
                             "pipeline.synth split)")
        if self.cfg.oracle_damage and self.cfg.oracle_damage not in degrade.ALPHA_DAMAGES:
            raise ValueError(f"unknown oracle damage {self.cfg.oracle_damage!r}; choose one of {degrade.ALPHA_DAMAGES}")
        if not 0.0 <= float(self.cfg.oracle_strength) <= 1.0:
            raise ValueError(f"oracle strength must be in [0, 1], got {self.cfg.oracle_strength}")
        self.fs, self.root = fsspec.core.url_to_fs(self.cfg.checkpoint)
        if not self.fs.isdir(self.root):
            raise ValueError(f"ground-truth folder {self.cfg.checkpoint} does not exist")
        self._sha256: str | None = None

    def params(self) -> dict:
        return {"ground_truth": self.cfg.checkpoint, "damage": self.cfg.oracle_damage or None,
                "strength": float(self.cfg.oracle_strength)}

    def weights_hash(self) -> str:
        """sha256 of the split's synth_meta.json (else of the folder listing): what the ground truth is."""
        if self._sha256 is None:
            meta = f"{self.root.rstrip('/').rsplit('/', 1)[0]}/{META_FILE}"
            if self.fs.exists(meta):
                self._sha256 = hashlib.sha256(self.fs.cat_file(meta)).hexdigest()
            else:
                listing = sorted((p, self.fs.size(p)) for p in self.fs.find(self.root))
                self._sha256 = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return self._sha256

    def ground_truth(self, key: str, num_frames: int) -> np.ndarray:
        """float32[T,H,W] ground truth of the sample ``key`` (its first ``num_frames`` annotated frames)."""
        k = schema.parse_key(key)
        out = []
        for i in range(num_frames):
            path = gt_png_path(self.root, k.video_id, k.masklet_id, k.start + i)
            try:
                with self.fs.open(path, "rb") as f:
                    out.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("L"), np.float32) / 255.0)
            except FileNotFoundError:
                raise ValueError(f"no ground truth for {key} frame {k.start + i}: {path}") from None
        return np.stack(out)

    def refine(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise ValueError("the oracle matter needs the sample keys (it is called with refine_batch_uint8)")

    def refine_batch_uint8(self, clips: Sequence[tuple[np.ndarray, np.ndarray]],
                           keys: Sequence[str] | None = None) -> list[np.ndarray]:
        if keys is None or len(keys) != len(clips):
            raise ValueError("the oracle matter needs one sample key per clip")
        out = []
        for (frames, masks), key in zip(clips, keys):
            self.check_inputs(frames, masks)
            gt = self.ground_truth(key, len(masks))
            if gt.shape != masks.shape:
                raise ValueError(f"ground truth {list(gt.shape)} of {key} does not match its masks {list(masks.shape)}")
            if self.cfg.oracle_damage and self.cfg.oracle_strength > 0:
                gt = degrade.damage_alpha(gt, masks, self.cfg.oracle_damage, float(self.cfg.oracle_strength),
                                          seed=zlib.crc32(key.encode()))
            out.append(to_uint8(gt))
        return out
