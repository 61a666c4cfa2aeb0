"""Segmentation metrics, measured at each image's ORIGINAL size.

- Logits are upsampled bilinearly to (H, W), then sigmoid and threshold.
- Empty-mask rule: Dice = IoU = 1 when both prediction and ground truth are empty,
  0 when exactly one of them is empty.  Metrics are never NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EMPTY_MASK_RULE = "both empty -> 1, one empty -> 0"
RESOLUTION = "original image size"


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Dice and IoU of two binary masks of the same shape (empty-mask rule in the module docstring)."""
    pred, target = pred.bool(), target.bool()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    inter = (pred & target).sum().item()
    ps, ts = pred.sum().item(), target.sum().item()
    if ps + ts == 0:
        return 1.0, 1.0
    return 2.0 * inter / (ps + ts), inter / (ps + ts - inter)


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B,1,h,w) or (1,h,w) logits to ``size`` (H, W), in float32."""
    squeeze = logits.dim() == 3
    x = logits[None] if squeeze else logits
    x = F.interpolate(x.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def mask_at_size(logits: torch.Tensor, size, threshold: float) -> torch.Tensor:
    """One image's (1,h,w) logits -> bool (H, W) mask on the CPU: bilinear upsampling, sigmoid, threshold."""
    return (torch.sigmoid(upsample_logits(logits, size)[0]) > threshold).cpu()


def metric_card(threshold: float, resolution: str = RESOLUTION) -> dict:
    """How a number was computed, stored next to it in every summary and table."""
    return {"aggregation": "mean over images (per-image Dice/IoU, then averaged)", "threshold": threshold,
            "resolution": resolution, "upsampling": "bilinear on logits, then sigmoid and threshold",
            "empty_mask_rule": EMPTY_MASK_RULE}
