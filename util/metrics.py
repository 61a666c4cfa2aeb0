"""Segmentation metrics, measured at each image's ORIGINAL size.

- Logits are upsampled bilinearly to (H, W), then sigmoid and threshold.
- Empty-mask rule: Dice = IoU = 1 when both prediction and ground truth are empty,
  0 when exactly one of them is empty.  Dice and IoU are never NaN.
- HD95: the 95th percentile of the symmetric distances between the two masks' surfaces (MONAI's
  ``compute_hausdorff_distance``), in pixels, and in millimetres where the pixel spacing is known.  It is not
  defined when either mask is empty: such images are left out of the HD95 mean and counted.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

EMPTY_MASK_RULE = "both empty -> 1, one empty -> 0"
HD95_RULE = ("95th percentile of the symmetric surface distances (MONAI compute_hausdorff_distance), at the "
             "original size; an image where either mask is empty has no HD95: it is left out of the mean and "
             "counted (hd95_excluded)")
RESOLUTION = "original image size"


def hd95(pred: torch.Tensor, target: torch.Tensor, spacing=None) -> float:
    """HD95 between two (H, W) binary masks, in pixels or, with ``spacing`` (row, column) in mm, in mm.
    NaN when either mask is empty (the image is left out of the mean; :data:`HD95_RULE`)."""
    from monai.metrics import compute_hausdorff_distance
    pred, target = pred.bool().cpu(), target.bool().cpu()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if not pred.any() or not target.any():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notices about its own arguments
        d = compute_hausdorff_distance(pred[None, None], target[None, None], include_background=True,
                                       percentile=95, spacing=None if spacing is None else [list(map(float, spacing))])
    return float(d.item())


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


def mask_statistics(prob, mask, spacing=None) -> dict:
    """Area (pixels, fraction of the image, mm² where ``spacing`` (row, col) mm is known, else None), mean
    probability inside the mask (None when it is empty) and the image's largest probability, unrounded: the one
    computation behind predict.py's CSV and the app's table."""
    area = int(mask.sum())
    return {"area_px": area, "area_fraction": area / mask.size,
            "area_mm2": area * float(spacing[0]) * float(spacing[1]) if spacing else None,
            "mean_prob_in_mask": float(prob[mask].mean()) if area else None, "max_prob": float(prob.max())}


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B,1,h,w) or (1,h,w) logits to ``size`` (H, W), in float32."""
    squeeze = logits.dim() == 3
    x = logits[None] if squeeze else logits
    x = F.interpolate(x.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def mask_at_size(logits: torch.Tensor, size, threshold: float) -> torch.Tensor:
    """One image's (1,h,w) logits -> bool (H, W) mask on the CPU: bilinear upsampling, sigmoid, threshold."""
    return (torch.sigmoid(upsample_logits(logits, size)[0]) > threshold).cpu()


def masks_at_size(logits: torch.Tensor, size, threshold: float) -> torch.Tensor:
    """(B,1,h,w) logits -> bool (B, H, W) masks where the logits are (no host copy): ``mask_at_size`` batched."""
    return torch.sigmoid(upsample_logits(logits, size)[:, 0]) > threshold


def batch_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """int64 (B, 3): intersection, predicted and ground-truth pixels of each pair of (B, H, W) masks."""
    pred, target = pred.bool(), target.bool()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    dims = tuple(range(1, pred.dim()))
    return torch.stack([(pred & target).sum(dims), pred.sum(dims), target.sum(dims)], dim=1)


def dice_iou_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 Dice and IoU (B,) from ``batch_counts`` (the empty-mask rule; equal to ``dice_iou`` per image)."""
    c = counts.to(torch.float64)
    inter, ps, ts = c[:, 0], c[:, 1], c[:, 2]
    total = ps + ts
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2.0 * inter / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(total), inter / (total - inter).clamp_min(1))
    return dice, iou


def batch_dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU (B,) of B pairs of equal-size masks, computed where they are (one pass, no per-image sync)."""
    return dice_iou_from_counts(batch_counts(pred, target))


def score_at_sizes(logits: torch.Tensor, targets, threshold: float, keep_masks: bool = False):
    """Per-image counts of ``logits`` (B,1,h,w) against ``targets`` (a (B,H,W) tensor or a list of (H_i, W_i)
    masks, any sizes): images of equal size are upsampled, thresholded and counted together on the logits'
    device.  Returns int64 (B, 3) counts (``batch_counts``) on that device, and the bool masks (a list, in
    batch order) when ``keep_masks``."""
    device = logits.device
    b = logits.shape[0]
    counts = torch.empty((b, 3), dtype=torch.int64, device=device)
    masks: list = [None] * b
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(b):
        groups.setdefault(tuple(int(s) for s in targets[i].shape[-2:]), []).append(i)
    for size, idx in groups.items():
        if torch.is_tensor(targets) and len(idx) == b:
            tgt = targets.to(device, non_blocking=True)
        else:
            tgt = torch.stack([targets[i] for i in idx]).to(device, non_blocking=True)
        sel = logits if len(idx) == b else logits[torch.tensor(idx, device=device)]
        pred = masks_at_size(sel, size, threshold)
        c = batch_counts(pred, tgt)
        if len(idx) == b:
            counts = c
        else:
            counts[torch.tensor(idx, device=device)] = c
        if keep_masks:
            for k, i in enumerate(idx):
                masks[i] = pred[k]
    return (counts, masks) if keep_masks else counts


def metric_card(threshold: float, resolution: str = RESOLUTION) -> dict:
    """How a number was computed, stored next to it in every summary and table."""
    return {"aggregation": "dice_mean/iou_mean: mean over images of per-image Dice/IoU (the paper's protocol); "
                           "dice_pooled/iou_pooled: over all pixels of all images",
            "threshold": threshold, "resolution": resolution,
            "upsampling": "bilinear on logits, then sigmoid and threshold", "empty_mask_rule": EMPTY_MASK_RULE,
            "hd95": HD95_RULE,
            "absent_targets": "records with an empty ground truth are also reported apart (false-positive rate, "
                              "mean predicted area)"}
