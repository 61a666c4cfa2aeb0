"""Segmentation losses, always computed in float32 (also under AMP)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from util.metrics import upsample_logits


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch; eps smooths empty masks."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1.0 - (2.0 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def present_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice per image, averaged over the images whose target has foreground only (the released code's
    ``TunedDiceLoss`` for the CNNs, src/losses/tuned_dice_loss.py, which keeps only target planes holding a 1).
    A batch without any foreground gives 0 with a gradient of zero (the code's mean over no plane is NaN)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    present = t.amax(1) > 0
    if not present.any():
        return logits.sum() * 0.0
    p, t = p[present], t[present]
    inter = (p * t).sum(1)
    return (1.0 - (2.0 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


#: The losses ``--loss`` offers: name -> what it computes.
LOSSES = {
    "dice+bce": "soft Dice + bce_weight x binary cross-entropy (the paper: 0.2)",
    "dice": "soft Dice only",
    "bce": "binary cross-entropy only",
    "dice-code": "soft Dice only, smoothing 1e-5 (what the released code's DiceCELoss computed on one sigmoid channel: "
                 "its cross-entropy term is 0)",
    "dice1.5+bce": "1.5 x soft Dice (smoothing 1e-5) + bce_weight x binary cross-entropy (VLSM-Adapter's MONAI "
                   "DiceCELoss(lambda_dice=1.5, lambda_ce=1.0) on one sigmoid channel)",
    "dice-present": "soft Dice, smoothing 1e-5, over the images whose target has foreground (the released code's "
                    "TunedDiceLoss for the CNNs)",
}


class SegLoss(torch.nn.Module):
    """One of :data:`LOSSES`.  Logits smaller than the target (CRIS predicts at 1/4) are upsampled bilinearly
    first."""

    def __init__(self, kind: str = "dice+bce", bce_weight: float = 0.2):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss '{kind}'; choose from {', '.join(LOSSES)}")
        self.kind, self.bce_weight = kind, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = upsample_logits(logits, target.shape[-2:])
        logits, target = logits.float(), target.float()
        out = {}
        if self.kind in ("dice+bce", "dice"):
            out["dice_loss"] = soft_dice_loss(logits, target)
        elif self.kind in ("dice-code", "dice1.5+bce"):
            out["dice_loss"] = soft_dice_loss(logits, target, eps=1e-5)
        elif self.kind == "dice-present":
            out["dice_loss"] = present_dice_loss(logits, target)
        if self.kind in ("dice+bce", "bce", "dice1.5+bce"):
            out["bce_loss"] = F.binary_cross_entropy_with_logits(logits, target)
        w = {"dice_loss": 1.5 if self.kind == "dice1.5+bce" else 1.0,
             "bce_loss": self.bce_weight if self.kind in ("dice+bce", "dice1.5+bce") else 1.0}
        out["loss"] = sum(w[k] * v for k, v in out.items())
        return out
