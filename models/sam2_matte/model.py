"""SAM2-Matte: SAM 2's training model (``SAM2Train``) unchanged, prompted from binarised alpha, and a
streaming tracker that reads sigmoid(mask logits) as alpha.

Importing this module imports SAM 2 (the ``sam2`` extra); call :func:`config.require_sam2` first for a
clear error when it is missing.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import sam2  # noqa: F401  (initialises hydra's config module "sam2")
import torch
import torch.nn.functional as F
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from training.model.sam2 import SAM2Train
from training.utils.data_utils import BatchedVideoDatapoint

from models.sam2_matte.config import Recipe, Variant, default_recipe, variant

log = logging.getLogger(__name__)

# SAM 2's image normalisation (ImageNet), as in its training transforms and predictors
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
PROMPT_THRESHOLD = 0.5
MODEL_TARGET = "models.sam2_matte.model.SAM2Matte"


class SAM2Matte(SAM2Train):
    """``SAM2Train`` with soft alpha in ``BatchedVideoDatapoint.masks``.

    SAM 2 samples its prompts (mask input, first click, box, correction clicks) from boolean masks;
    here they come from ``alpha > prompt_threshold``, while the soft alpha stays the loss target.
    No parameter, module or forward step of SAM 2 is changed: a SAM2-Matte state dict is a SAM 2 one.
    """

    def __init__(self, *args, prompt_threshold: float = PROMPT_THRESHOLD, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt_threshold = float(prompt_threshold)

    def prepare_prompt_inputs(self, backbone_out, input, start_frame_idx=0):
        if input.masks.dtype != torch.bool:
            input = BatchedVideoDatapoint(
                img_batch=input.img_batch, obj_to_frame_idx=input.obj_to_frame_idx,
                masks=input.masks > self.prompt_threshold, metadata=input.metadata,
                dict_key=input.dict_key, batch_size=input.batch_size)
        return super().prepare_prompt_inputs(backbone_out, input, start_frame_idx)


def model_config(v: Variant, image_size: int | None = None, recipe: Recipe | None = None):
    """The ``model`` node of `v`'s SAM 2 config, turned into a SAM2Matte training model config."""
    size = int(image_size or v.image_size)
    if size % 32:
        raise ValueError(f"image size must be a multiple of 32, got {size}")
    recipe = recipe or default_recipe(v.name)
    cfg = compose(config_name=v.config)
    OmegaConf.set_struct(cfg, False)
    over = OmegaConf.merge(OmegaConf.create({"model": v.overrides}), OmegaConf.create({"model": {
        "_target_": MODEL_TARGET, "image_size": size, **recipe.model_args(),
        "memory_attention": {"layer": {"self_attention": {"feat_sizes": [size // 16] * 2},
                                       "cross_attention": {"feat_sizes": [size // 16] * 2}}}}}))
    return OmegaConf.merge(cfg, over).model


def build_model(model: str, image_size: int | None = None, recipe: Recipe | None = None) -> SAM2Matte:
    """A randomly initialised SAM2-Matte of variant `model` (load weights with :func:`load_weights`)."""
    v = variant(model)
    return instantiate(model_config(v, image_size, recipe), _recursive_=True)


def read_state_dict(url: str) -> dict:
    """The ``model`` state dict of a SAM 2 checkpoint (published ``{"model": ...}`` files and SAM2-Matte
    training checkpoints alike), from a path or fsspec URL."""
    with fsspec.open(url, "rb") as f:
        obj = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "model" not in obj:
        raise ValueError(f"{url}: not a SAM 2 checkpoint (no 'model' entry)")
    return obj["model"]


def checkpoint_path(init: str, model: str) -> str:
    """`init` itself, or, when it is a folder, the published file name of `model` inside it."""
    fs, path = fsspec.core.url_to_fs(init)
    if fs.isdir(path):
        v = variant(model)
        if v.checkpoint is None:
            raise ValueError(f"model {model!r} has no published checkpoint; pass a checkpoint file")
        return init.rstrip("/") + "/" + v.checkpoint
    return init


def load_weights(net: torch.nn.Module, url: str) -> None:
    """Load a SAM 2 state dict into `net`, strictly (as SAM 2's own loaders do), with a one-line error."""
    sd = read_state_dict(url)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{url} does not fit this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); is --model right?")


# --- inference ------------------------------------------------------------------------------------


def preprocess(frame: np.ndarray, size: int) -> torch.Tensor:
    """uint8[H,W,3] RGB -> float[3,size,size], SAM 2-normalised (square resize, antialiased bilinear,
    the same resampling as training)."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x[0].float() / 255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """float[..., 3, H, W] in [0,1] -> SAM 2's normalised input."""
    mean = torch.tensor(IMG_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


@dataclass
class Prompt:
    """A first-frame prompt in video pixels: a mask (bool[H,W]) or a box (x0, y0, x1, y1)."""

    mask: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self):
        if (self.mask is None) == (self.box is None):
            raise ValueError("give exactly one prompt: a mask or a box")
        if self.mask is not None and not np.asarray(self.mask).any():
            raise ValueError("the prompt mask is empty")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {self.box}")


class Tracker:
    """Mattes a video frame by frame with SAM 2's own ``track_step`` (memory bank, object pointers),
    holding only the memory SAM 2 can attend to (``num_maskmem`` frames, ``max_obj_ptrs_in_encoder``
    object pointers). alpha = sigmoid(high-res mask logits), resized to the video size.

    A mask prompt on the first frame becomes its memory. A model trained with ``--refine-mask-prompt``
    decodes that frame from the mask prompt and its image (``use_mask_input_as_output_without_sam``
    False); otherwise SAM 2 passes the mask input through as the frame's output, and that frame's alpha
    is decoded like any tracked frame, from the memory of its own mask. Either way every frame's alpha
    is the model's matte.
    """

    def __init__(self, net: SAM2Matte, device: torch.device | str = "cpu"):
        self.net = net.eval()
        self.device = torch.device(device)
        self.size = int(net.image_size)
        self.keep = max(int(net.num_maskmem), int(net.max_obj_ptrs_in_encoder)) + 1

    def _feats(self, img: torch.Tensor):
        backbone_out = self.net.forward_image(img[None].to(self.device))
        _, feats, pos, sizes = self.net._prepare_backbone_features(backbone_out)
        return feats, pos, sizes

    def _step(self, t, init, feats, pos, sizes, out, n, points=None, mask=None, memory=True):
        return self.net.track_step(frame_idx=t, is_init_cond_frame=init, current_vision_feats=feats,
                                   current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=points,
                                   mask_inputs=mask, output_dict=out, num_frames=n, run_mem_encoder=memory)

    def _prompt_inputs(self, prompt: Prompt, h: int, w: int):
        s = self.size
        if prompt.mask is not None:
            m = torch.from_numpy(np.asarray(prompt.mask, np.float32))[None, None]
            m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            return None, (m > 0.5).to(self.device)
        x0, y0, x1, y1 = prompt.box
        pts = torch.tensor([[[x0 / w * s, y0 / h * s], [x1 / w * s, y1 / h * s]]], dtype=torch.float32)
        return {"point_coords": pts.to(self.device), "point_labels": torch.tensor([[2, 3]], dtype=torch.int32,
                                                                                   device=self.device)}, None

    def _alpha(self, out: dict, h: int, w: int) -> np.ndarray:
        logits = out["pred_masks_high_res"].float()
        a = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).sigmoid()
        return a[0, 0].cpu().numpy()

    @torch.inference_mode()
    def run(self, frames: Iterable[np.ndarray], prompt: Prompt, num_frames: int) -> Iterator[np.ndarray]:
        """Yield alpha float32[H,W] in [0,1] for each uint8[H,W,3] frame; `prompt` is on the first one."""
        out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        n = max(1, int(num_frames))
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else contextlib.nullcontext())
        with autocast:
            for t, frame in enumerate(frames):
                h, w = frame.shape[:2]
                feats, pos, sizes = self._feats(preprocess(frame, self.size))
                if t == 0:
                    points, mask = self._prompt_inputs(prompt, h, w)
                    cur = self._step(0, True, feats, pos, sizes, out, n, points=points, mask=mask)
                    out["cond_frame_outputs"][0] = cur
                    if mask is not None and self.net.use_mask_input_as_output_without_sam:
                        # the mask was passed through: decode the prompted frame from its own memory
                        cur = self._step(0, False, feats, pos, sizes, out, n, memory=False)
                else:
                    cur = self._step(t, False, feats, pos, sizes, out, n)
                    out["non_cond_frame_outputs"][t] = cur
                    out["non_cond_frame_outputs"].pop(t - self.keep, None)
                yield self._alpha(cur, h, w)

