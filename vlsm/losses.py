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


#: The losses ``--loss`` offers: name -> what it computes.
LOSSES = {
    "dice+bce": "soft Dice + bce_weight x binary cross-entropy (the paper: 0.2)",
    "dice": "soft Dice only",
    "bce": "binary cross-entropy only",
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
        if self.kind in ("dice+bce", "bce"):
            out["bce_loss"] = F.binary_cross_entropy_with_logits(logits, target)
        w = {"dice_loss": 1.0, "bce_loss": self.bce_weight if self.kind == "dice+bce" else 1.0}
        out["loss"] = sum(w[k] * v for k, v in out.items())
        return out
