"""SAM 2 model variants (published config + checkpoint file names), the tiny CPU config, and the
training recipe (prompt sampling and optimiser settings of SAM 2's own fine-tuning config)."""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass, field, replace

EXTRA_HINT = ("SAM2-Matte needs the sam2 extra (SAM 2's training code): `make setup`, or "
              "`pip install --no-deps -r requirements-sam2.lock` in an environment that has torch")


class MissingExtra(RuntimeError):
    """The pinned ``sam2`` extra is not installed, or SAM 2's ``training`` package is shadowed."""


def require_sam2() -> None:
    """Import SAM 2 and its ``training`` package, or raise :class:`MissingExtra` saying what is wrong.

    ``training`` is a top-level name in the ``sam2`` wheel; a ``training/`` folder in the working
    directory (or anywhere earlier on ``sys.path``) would shadow it, so its origin is checked."""
    try:
        sam2 = importlib.import_module("sam2")
        training = importlib.import_module("training")
    except ImportError as exn:
        raise MissingExtra(f"{EXTRA_HINT} ({exn})") from exn
    sam2_dir = os.path.dirname(os.path.abspath(sam2.__file__))
    train_dir = os.path.dirname(os.path.abspath(getattr(training, "__file__", None) or "?"))
    if not os.path.exists(os.path.join(train_dir, "model", "sam2.py")):
        raise MissingExtra(f"the `training` package at {train_dir} is not SAM 2's training code "
                           f"(SAM 2 is at {sam2_dir}); run from a directory without a training/ folder")
    try:
        importlib.import_module("training.model.sam2")
    except ImportError as exn:
        raise MissingExtra(f"{EXTRA_HINT} ({exn})") from exn


@dataclass(frozen=True)
class Variant:
    """A model: the SAM 2 config it is built from and the published checkpoint file name."""

    name: str
    config: str                     # hydra config name inside the sam2 package
    checkpoint: str | None          # published file name (None: random init only)
    image_size: int = 1024
    overrides: dict = field(default_factory=dict)   # merged into the config's ``model`` node


def _tiny_overrides(size: int, width: int = 1) -> dict:
    """SAM 2.1 Hiera-T's structure at toy width (0.65M parameters; ``width`` 2: 2.4M): every module
    SAM 2 has, so every code path (memory, object pointers, multimask, high-res features) runs on a CPU."""
    d, m, e = 32 * width, 16 * width, 8 * width   # model width, memory width, Hiera's first-stage width
    feat = [size // 16, size // 16]
    return {
        "image_encoder": {
            "trunk": {"embed_dim": e, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3],
                      "window_pos_embed_bkg_spatial_size": [4, 4], "window_spec": [8, 4, 4, 2]},
            "neck": {"d_model": d, "backbone_channel_list": [8 * e, 4 * e, 2 * e, e],
                     "position_encoding": {"num_pos_feats": d}},
        },
        "memory_attention": {"d_model": d, "num_layers": 1, "layer": {
            "d_model": d, "dim_feedforward": 2 * d,
            "self_attention": {"embedding_dim": d, "feat_sizes": feat},
            "cross_attention": {"embedding_dim": d, "feat_sizes": feat, "kv_in_dim": m}}},
        "memory_encoder": {"out_dim": m, "in_dim": d, "position_encoding": {"num_pos_feats": m},
                           "mask_downsampler": {"embed_dim": d}, "fuser": {"num_layers": 1, "layer": {"dim": d}}},
    }


def _published() -> dict[str, Variant]:
    out = {}
    for ver, prefix in (("sam2.1", "sam2.1_hiera"), ("sam2", "sam2_hiera")):
        for short, long in (("t", "tiny"), ("s", "small"), ("b+", "base_plus"), ("l", "large")):
            name = f"{prefix}_{short}"
            out[name] = Variant(name, f"configs/{ver}/{name}.yaml", f"{prefix}_{long}.pt")
    return out


TINY_SIZE = 128
VARIANTS: dict[str, Variant] = {
    "tiny": Variant("tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", None, TINY_SIZE, _tiny_overrides(TINY_SIZE)),
    "tiny-wide": Variant("tiny-wide", "configs/sam2.1/sam2.1_hiera_t.yaml", None, TINY_SIZE,
                         _tiny_overrides(TINY_SIZE, width=2)),
    **_published(),
}


def variant(name: str) -> Variant:
    """The variant called `name` (``tiny``, ``sam2.1_hiera_b+``, ...), also found by its published
    checkpoint file name (``sam2.1_hiera_base_plus.pt``) or config file name (``sam2.1_hiera_b+.yaml``)."""
    if name in VARIANTS:
        return VARIANTS[name]
    base = os.path.basename(name)
    for v in VARIANTS.values():
        if base in (v.checkpoint, os.path.basename(v.config)) or (v.checkpoint and base == v.checkpoint[:-3]):
            return v
    raise KeyError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)} "
                   "(or a published checkpoint/config file name)")


@dataclass
class Recipe:
    """How SAM 2 is trained: prompts (SAM2Train's arguments) and optimiser settings.

    Defaults are those of SAM 2.1's own fine-tuning config (``sam2.1_hiera_b+_MOSE_finetune.yaml``):
    on the first frame (and a random second one), a mask prompt half of the time, otherwise one click
    (or, a quarter of the time, a box), then up to 7 correction clicks on 1-2 frames, sampled from the
    prediction's error (or, 10% of the time, from the ground truth).
    """

    prob_to_use_pt_input_for_train: float = 0.5
    prob_to_use_box_input_for_train: float = 0.5
    num_frames_to_correct_for_train: int = 2
    rand_frames_to_correct_for_train: bool = True
    add_all_frames_to_correct_as_cond: bool = True
    num_init_cond_frames_for_train: int = 2
    rand_init_cond_frames_for_train: bool = True
    num_correction_pt_per_frame: int = 7
    prob_to_sample_from_gt_for_train: float = 0.1
    # SAM 2's True: a mask prompt is passed through as its frame's output (that frame trains nothing).
    # False (train --refine-mask-prompt): SAM's decoder refines the mask prompt (its dense prompt
    # embedding) with the frame's image into that frame's output, which the loss trains as any other
    use_mask_input_as_output_without_sam: bool = True
    # optimiser (SAM 2's fine-tuning: AdamW, cosine lr to lr/10, wd 0.1 but not on biases/norms, clip 0.1)
    lr: float = 5.0e-6
    vision_lr: float = 3.0e-6
    weight_decay: float = 0.1
    grad_clip: float = 0.1

    def model_args(self) -> dict:
        """The SAM2Train constructor arguments of this recipe."""
        return {k: v for k, v in asdict(self).items() if k.endswith("_for_train") or k in (
            "add_all_frames_to_correct_as_cond", "num_correction_pt_per_frame",
            "use_mask_input_as_output_without_sam")}


def default_recipe(model: str) -> Recipe:
    """SAM 2's fine-tuning recipe; for ``tiny`` (random init, CPU) a from-scratch one: larger learning
    rate and clip, fewer correction clicks (each is a full decoder pass)."""
    r = Recipe()
    if model.startswith("tiny"):
        r = replace(r, lr=1e-3, vision_lr=1e-3, grad_clip=1.0, num_correction_pt_per_frame=2)
    return r
