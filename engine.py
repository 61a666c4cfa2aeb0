"""The loops, and nothing else: ``train_one_epoch`` and ``evaluate`` (as in DETR and MAE), each returning a dict.

Conventions
- Models return logits (B,1,h,w); the loss function upsamples them to the target size (vlsm.losses).
- Metrics in ``evaluate`` are computed per image at the image's ORIGINAL size when the loader returns
  ``orig_mask`` (vlsm.metrics: bilinear upsampling, sigmoid, threshold; empty-mask rule).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from vlsm.metrics import dice_iou, mask_at_size
from vlsm.runtime import autocast, forward_batch


class NonFiniteLossError(ValueError):
    """Too many non-finite losses in a row (a ValueError, so the scripts print it as one clear line)."""


def train_one_epoch(model, loader, optimizer, loss_fn, device, epoch: int, scaler=None, amp: bool = False,
                    clip_grad: float = 0.0, max_bad_steps: int = 20, writer=None, global_step: int = 0,
                    log_every: int = 10, max_steps: int | None = None, on_step=None) -> dict:
    """One pass over ``loader``. Non-finite losses skip the step (counted); ``max_bad_steps`` in a row stop the run."""
    model.train()
    sums: dict[str, float] = {}
    n, bad, bad_in_row, skipped = 0, 0, 0, []
    pbar = tqdm(loader, desc=f"train {epoch}", leave=False, dynamic_ncols=True, file=sys.stdout,
                disable=not sys.stdout.isatty())
    t0 = time.time()
    for step, batch in enumerate(pbar):
        skipped += batch.get("skipped", [])
        if "image" not in batch:
            continue
        with autocast(device, amp):
            logits = forward_batch(model, batch, device)
        losses = loss_fn(logits, batch["mask"].to(device, non_blocking=True))
        loss = losses["loss"]
        if not torch.isfinite(loss):
            bad += 1
            bad_in_row += 1
            optimizer.zero_grad(set_to_none=True)
            if bad_in_row >= max_bad_steps:
                raise NonFiniteLossError(f"{bad_in_row} non-finite losses in a row at epoch {epoch}, step {step}: "
                                         f"lower the learning rate, turn off --amp, or check the data")
            continue
        bad_in_row = 0
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        bs = batch["image"].shape[0]
        n += bs
        values = {k: v.item() for k, v in losses.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v * bs
        global_step += 1
        if writer is not None and global_step % log_every == 0:
            writer.add_scalar("train/loss_step", values["loss"], global_step)
        pbar.set_postfix(loss=f"{values['loss']:.4f}")
        if on_step is not None:
            on_step(step)
        if max_steps is not None and step + 1 >= max_steps:
            break
    stats = {k: v / max(n, 1) for k, v in sums.items()}
    stats.update(n_samples=n, nonfinite_steps=bad, skipped=skipped, global_step=global_step,
                 seconds=time.time() - t0, lr=optimizer.param_groups[-1]["lr"])
    return stats


@torch.no_grad()
def evaluate(model, loader, device, threshold: float = 0.5, amp: bool = False, loss_fn=None,
             per_image: bool = False, save_fn=None, desc: str = "eval") -> dict:
    """Dice/IoU per image, at the original image size when the loader returns ``orig_mask``.

    Returns means/stds (and the per-image rows when ``per_image``).  ``save_fn(batch_item, pred_bool)``
    is called for every prediction at original size (used by --save-masks).
    """
    model.eval()
    rows, losses, skipped = [], [], []
    pbar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stdout, disable=not sys.stdout.isatty())
    for batch in pbar:
        skipped += batch.get("skipped", [])
        if "image" not in batch:
            continue
        with autocast(device, amp):
            logits = forward_batch(model, batch, device)
        logits = logits.float()
        if loss_fn is not None:
            losses.append(loss_fn(logits, batch["mask"].to(device))["loss"].item() * len(batch["text"]))
        for i in range(logits.shape[0]):
            if "orig_mask" in batch:
                target = batch["orig_mask"][i]
            else:
                target = batch["mask"][i, 0] >= 0.5
            pred = mask_at_size(logits[i], target.shape, threshold)
            d, j = dice_iou(pred, target)
            rows.append({"dataset": batch["dataset"][i], "img_name": batch["name"][i],
                         "mask_name": batch["mask_name"][i], "prompt": batch["text"][i], "dice": d, "iou": j,
                         "gt_pixels": int(target.sum()), "pred_pixels": int(pred.sum()),
                         "inter_pixels": int((pred & target.bool()).sum()), "pixels": int(target.numel())})
            if save_fn is not None:
                save_fn({k: v[i] for k, v in batch.items() if k != "skipped"}, pred)
    dice = np.array([r["dice"] for r in rows], dtype=np.float64)
    iou = np.array([r["iou"] for r in rows], dtype=np.float64)
    out = {"dice": float(dice.mean()) if len(rows) else float("nan"),
           "dice_std": float(dice.std()) if len(rows) else float("nan"),
           "iou": float(iou.mean()) if len(rows) else float("nan"),
           "iou_std": float(iou.std()) if len(rows) else float("nan"),
           "n": len(rows), "skipped": skipped}
    if losses:
        out["loss"] = sum(losses) / max(len(rows), 1)
    if per_image:
        out["rows"] = rows
    return out
