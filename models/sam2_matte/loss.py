"""The SAM2-Matte loss: SAM 2's multi-step, multi-mask loss with matting terms on alpha.

It is SAM 2's ``MultiStepMultiMasksAndIous`` (same walk over frames and correction steps, same
number-of-objects normalisation across GPUs, same reduction into ``core_loss``) with the per-mask
terms replaced, for soft targets ``alpha`` = the batch's masks:

- ``loss_l1``: mean |sigmoid(logits) - alpha|;
- ``loss_lap``: L1 between Laplacian pyramids of the two (5 levels, level i weighted 2^i), which
  weighs edges and fine structure (hair) that plain L1 averages away;
- ``loss_grad`` (weight 0 unless asked): L1 between the Sobel gradients;
- ``loss_bce``: binary cross-entropy of the logits against the soft alpha, which is minimal at
  sigmoid(logits) = alpha like L1, but whose gradient (sigmoid - alpha) does not vanish where the
  sigmoid saturates on the wrong side. With L1 alone a randomly initialised model collapses to "no
  object" (L1 ~ the object's area, gradients ~0); fine-tuning a pretrained SAM 2 does not need it as
  much, it costs nothing to keep;
- ``loss_iou``: the IoU head learns the *soft* IoU of each predicted matte, sum(min)/sum(max) of
  (alpha_pred, alpha) (binary IoU when both are binary), with L1 on all masks as SAM 2's config does
  (``supervise_all_iou``, ``iou_use_l1_loss``); SAM 2 picks the multimask output with the highest
  predicted IoU, so it then picks the best matte;
- ``loss_class``: the object-score head learns "object present" = max(alpha) > 0.5 (the prompt
  threshold), with SAM 2's sigmoid focal loss at gamma 0 (plain BCE), as its fine-tuning config.

As in SAM 2, of several masks output for one prompt only the one with the lowest matting loss is
back-propagated, and matting and IoU terms count only where the object is present (an absent object is
the object-score head's job: SAM 2 then outputs -1024 logits, alpha 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from training.loss_fns import MultiStepMultiMasksAndIous, sigmoid_focal_loss
from training.trainer import CORE_LOSS_KEY

from models.sam2_matte.model import PROMPT_THRESHOLD

DEFAULT_WEIGHTS = {"loss_l1": 20.0, "loss_lap": 2.0, "loss_grad": 0.0, "loss_bce": 20.0, "loss_iou": 1.0,
                   "loss_class": 1.0}
LAP_LEVELS = 5
BCE_MIN_LOGIT = 30.0

_GAUSS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = (_GAUSS[:, None] * _GAUSS[None, :]).to(x)[None, None]
    c = x.shape[1]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(c, 1, 5, 5), groups=c)


def laplacian_pyramid(x: torch.Tensor, levels: int = LAP_LEVELS) -> list[torch.Tensor]:
    """Laplacian pyramid of [N,C,H,W] (band-pass levels, then the low-pass residual)."""
    out, cur = [], x
    for _ in range(levels - 1):
        if min(cur.shape[-2:]) < 4:
            break
        down = _blur(cur)[..., ::2, ::2]
        up = F.interpolate(down, size=cur.shape[-2:], mode="bilinear", align_corners=False)
        out.append(cur - up)
        cur = down
    out.append(cur)
    return out


def laplacian_l1(pred: torch.Tensor, gt: torch.Tensor, levels: int = LAP_LEVELS) -> torch.Tensor:
    """Per-channel Laplacian loss of [N,M,H,W] against [N,M,H,W]: [N,M]."""
    return sum((2 ** i) * (p - g).abs().flatten(2).mean(-1)
               for i, (p, g) in enumerate(zip(laplacian_pyramid(pred, levels), laplacian_pyramid(gt, levels))))


def gradient_l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-channel L1 between Sobel gradients of [N,M,H,W] tensors: [N,M]."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).to(pred) / 8.0
    kk = torch.stack([k, k.t()])[:, None]                   # [2,1,3,3]: d/dx, d/dy
    n, m, h, w = pred.shape

    def g(x):
        return F.conv2d(F.pad(x.reshape(n * m, 1, h, w), (1, 1, 1, 1), mode="replicate"), kk)
    return (g(pred) - g(gt)).abs().reshape(n, m, -1).mean(-1)


def soft_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """sum(min)/sum(max) over pixels of [N,M,H,W] mattes: [N,M] (1 when both are empty)."""
    inter = torch.minimum(pred, gt).flatten(2).sum(-1)
    union = torch.maximum(pred, gt).flatten(2).sum(-1)
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.ones_like(union))


class MattingLoss(MultiStepMultiMasksAndIous):
    """SAM 2's multi-step multi-mask loss with matting terms (see the module docstring)."""

    def __init__(self, weight_dict: dict[str, float] | None = None, lap_levels: int = LAP_LEVELS,
                 presence_threshold: float = PROMPT_THRESHOLD):
        nn.Module.__init__(self)  # SAM 2's __init__ insists on its focal/dice weight names
        self.weight_dict = {**DEFAULT_WEIGHTS, **(weight_dict or {})}
        unknown = set(self.weight_dict) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        self.lap_levels = lap_levels
        self.presence_threshold = presence_threshold
        self.pred_obj_scores = True
        self.focal_alpha_obj_score, self.focal_gamma_obj_score = -1.0, 0.0
        self.supervise_all_iou, self.iou_use_l1_loss = True, True

    def _forward(self, outputs: dict, targets: torch.Tensor, num_objects: float) -> dict:
        target = targets.unsqueeze(1).float()   # soft alpha [N,1,H,W]
        losses = {k: 0 for k in DEFAULT_WEIGHTS}
        for masks, ious, obj in zip(outputs["multistep_pred_multimasks_high_res"], outputs["multistep_pred_ious"],
                                    outputs["multistep_object_score_logits"]):
            self._update_losses(losses, masks, target, ious, num_objects, obj)
        losses[CORE_LOSS_KEY] = self.reduce_loss(losses)
        return losses

    def _update_losses(self, losses, src_masks, target_masks, ious, num_objects, object_score_logits):
        alpha = src_masks.float().sigmoid()                  # [N,M,H,W]
        gt = target_masks.expand_as(alpha)
        per = {"loss_l1": (alpha - gt).abs().flatten(2).mean(-1)}
        if self.weight_dict["loss_lap"]:
            per["loss_lap"] = laplacian_l1(alpha, gt, self.lap_levels)
        if self.weight_dict["loss_grad"]:
            per["loss_grad"] = gradient_l1(alpha, gt)
        if self.weight_dict["loss_bce"]:
            # SAM 2 writes -1024 where the object-score head says "absent": bound it (no gradient there anyway)
            z = src_masks.float().clamp(min=-BCE_MIN_LOGIT)
            per["loss_bce"] = F.binary_cross_entropy_with_logits(z, gt, reduction="none").flatten(2).mean(-1)
        present = (target_masks.flatten(1).amax(-1) > self.presence_threshold).float()[:, None]   # [N,1]
        loss_class = sigmoid_focal_loss(object_score_logits.float(), present, num_objects,
                                        alpha=self.focal_alpha_obj_score, gamma=self.focal_gamma_obj_score)
        iou_target = soft_iou(alpha.detach(), gt)
        loss_iou = F.l1_loss(ious.float(), iou_target, reduction="none").mean(-1, keepdim=True)   # all masks
        combo = sum(self.weight_dict[k] * v for k, v in per.items())
        best = combo.argmin(-1) if combo.shape[1] > 1 else torch.zeros(combo.shape[0], dtype=torch.long,
                                                                        device=combo.device)
        rows = torch.arange(combo.shape[0], device=combo.device)
        for k, v in per.items():
            losses[k] += (v[rows, best][:, None] * present).sum() / num_objects
        losses["loss_iou"] += (loss_iou * present).sum() / num_objects
        losses["loss_class"] += loss_class
