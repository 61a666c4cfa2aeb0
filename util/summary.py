"""From per-image rows to the numbers a results file reports, with what they mean.

- ``dice_mean`` / ``iou_mean``: the paper's protocol, the mean over images of per-image Dice/IoU (empty-mask
  rule: both empty -> 1, one empty -> 0);
- ``dice_pooled`` / ``iou_pooled``: one Dice/IoU over all pixels of all images (large images weigh more);
- ``present``: the same means over the records whose target is not empty;
- ``absent``: records whose ground truth is empty (BUSI normal, a pathology not present, a prompt naming
  something that is not there): how often the model still predicts something (false-positive rate) and how
  much (mean predicted area as a fraction of the image), instead of hiding them in the Dice mean;
- ``hd95_mean`` / ``hd95_std``: over the images where both masks are non-empty (``hd95_n``; the others are
  counted in ``hd95_excluded``), in millimetres when every row has ``hd95_mm`` (a pixel spacing), in pixels
  otherwise; ``hd95_unit`` says which.
"""
from __future__ import annotations

import numpy as np


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return (float(a.mean()), float(a.std())) if a.size else (float("nan"), float("nan"))


def summarize(rows: list[dict]) -> dict:
    """rows: engine.evaluate's per-image rows (dice, iou, gt_pixels, pred_pixels, inter_pixels, pixels)."""
    out = {"n": len(rows)}
    out["dice_mean"], out["dice_std"] = _mean_std([r["dice"] for r in rows])
    out["iou_mean"], out["iou_std"] = _mean_std([r["iou"] for r in rows])
    inter = sum(r["inter_pixels"] for r in rows)
    gt = sum(r["gt_pixels"] for r in rows)
    pred = sum(r["pred_pixels"] for r in rows)
    out["dice_pooled"] = 2.0 * inter / (gt + pred) if gt + pred else 1.0
    out["iou_pooled"] = inter / (gt + pred - inter) if gt + pred - inter else 1.0
    out.update(hd95_summary(rows))
    present = [r for r in rows if r["gt_pixels"] > 0]
    absent = [r for r in rows if r["gt_pixels"] == 0]
    out["present"] = {"n": len(present), "dice_mean": _mean_std([r["dice"] for r in present])[0],
                      "iou_mean": _mean_std([r["iou"] for r in present])[0]}
    out["absent"] = {"n": len(absent),
                     "false_positive_rate": float(np.mean([r["pred_pixels"] > 0 for r in absent])) if absent
                     else float("nan"),
                     "mean_predicted_area": float(np.mean([r["pred_pixels"] / max(r["pixels"], 1) for r in absent]))
                     if absent else float("nan")}
    return out


def _finite(v) -> bool:
    return v not in (None, "") and np.isfinite(float(v))


def hd95_summary(rows: list[dict]) -> dict:
    """HD95 mean/std over the rows where it is defined, in mm when every row has a spacing, else in pixels."""
    if not rows or "hd95_px" not in rows[0]:
        return {}
    unit = "mm" if all(r.get("hd95_mm") not in (None, "") for r in rows) else "px"
    values = [float(r[f"hd95_{unit}"]) for r in rows if _finite(r.get(f"hd95_{unit}"))]
    mean, std = _mean_std(values)
    return {"hd95_mean": mean, "hd95_std": std, "hd95_unit": unit, "hd95_n": len(values),
            "hd95_excluded": len(rows) - len(values)}
