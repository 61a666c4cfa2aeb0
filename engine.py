"""The loops, and nothing else: ``train_one_epoch`` and ``evaluate`` (as in DETR and MAE), each returning a dict.

Conventions
- Models return logits (B,1,h,w); the loss function upsamples them to the target size (vlsm.losses).
- Metrics in ``evaluate`` are computed per image at the image's ORIGINAL size when the loader returns
  ``orig_mask`` (util.metrics: bilinear upsampling, sigmoid, threshold; empty-mask rule).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from util.metrics import dice_iou_from_counts, hd95, score_at_sizes
from util.runtime import autocast, forward_batch, loss_is_finite


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
        if not loss_is_finite(loss):
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


ROW_FIELDS = {"dataset": "dataset", "name": "img_name", "mask_name": "mask_name", "text": "prompt"}
NOT_PASSED = set(ROW_FIELDS) | {"skipped", "image", "mask", "orig_mask", "orig_size", "index", "features", "spacing"}


def evaluate(model, loader, device, threshold: float = 0.5, amp: bool = False, loss_fn=None,
             per_image: bool = False, save_fn=None, desc: str = "eval") -> dict:
    """Dice/IoU per image, at the original image size when the loader returns ``orig_mask``.

    Batched on the device: the images of a batch that share an original size are upsampled, thresholded and
    counted together (util.metrics.score_at_sizes); one host copy per batch.  Returns means/stds, ``sums``
    (what util.distributed adds up across processes) and the per-image rows when ``per_image`` (extra
    per-sample string fields of the batch, e.g. ``prompt_key``, are passed through).
    ``save_fn(batch_item, pred_bool)`` is called for every prediction at original size (used by --save-masks).
    Per-image rows also carry HD95 (``hd95_px``; ``hd95_mm`` where the batch gives each image's ``spacing``):
    computed on the host from the masks at original size, so only when ``per_image``.
    """
    model.eval()
    rows, skipped = [], []
    loss_sum = 0.0
    dice_parts, iou_parts = [], []
    pbar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stdout, disable=not sys.stdout.isatty())
    with torch.inference_mode():
        for batch in pbar:
            skipped += batch.get("skipped", [])
            if "image" not in batch:
                continue
            with autocast(device, amp):
                logits = forward_batch(model, batch, device)
            logits = logits.float()
            n = logits.shape[0]
            if loss_fn is not None:
                loss_sum += loss_fn(logits, batch["mask"].to(device, non_blocking=True))["loss"].item() * n
            targets = batch["orig_mask"] if "orig_mask" in batch else batch["mask"][:, 0] >= 0.5
            keep = save_fn is not None or per_image
            res = score_at_sizes(logits, targets, threshold, keep_masks=keep)
            counts, masks = res if keep else (res, None)
            dice, iou = dice_iou_from_counts(counts)
            dice_parts.append(dice)
            iou_parts.append(iou)
            if per_image:
                sizes = [int(t.shape[-2]) * int(t.shape[-1]) for t in targets]
                extra = [k for k, v in batch.items() if k not in NOT_PASSED and isinstance(v, list) and len(v) == n
                         and all(isinstance(x, str) or x is None for x in v) and any(isinstance(x, str) for x in v)]
                c, d, j = counts.tolist(), dice.tolist(), iou.tolist()
                for i in range(n):
                    row = {col: batch[k][i] for k, col in ROW_FIELDS.items()}
                    row.update(dice=d[i], iou=j[i], gt_pixels=c[i][2], pred_pixels=c[i][1], inter_pixels=c[i][0],
                               pixels=sizes[i], hd95_px=hd95(masks[i], targets[i]))
                    spacing = (batch.get("spacing") or [None] * n)[i]
                    if spacing is not None:
                        row["hd95_mm"] = hd95(masks[i], targets[i], spacing)
                    row.update({k: batch[k][i] or "" for k in extra})
                    rows.append(row)
            if save_fn is not None:
                for i in range(n):
                    save_fn({k: v[i] for k, v in batch.items() if k not in ("skipped", "features")}, masks[i].cpu())
    dice = torch.cat(dice_parts).cpu().numpy() if dice_parts else np.zeros(0)
    iou = torch.cat(iou_parts).cpu().numpy() if iou_parts else np.zeros(0)
    n = int(dice.size)
    out = {"dice": float(dice.mean()) if n else float("nan"),
           "dice_std": float(dice.std()) if n else float("nan"),
           "iou": float(iou.mean()) if n else float("nan"),
           "iou_std": float(iou.std()) if n else float("nan"),
           "n": n, "skipped": skipped,
           "sums": {"n": n, "dice": float(dice.sum()), "dice_sq": float((dice ** 2).sum()),
                    "iou": float(iou.sum()), "iou_sq": float((iou ** 2).sum()), "loss": loss_sum}}
    if loss_fn is not None and n:
        out["loss"] = loss_sum / n
    if per_image:
        out["rows"] = rows
    return out
