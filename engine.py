"""Training and evaluation engine: losses, metrics, one epoch of training, evaluation, checkpoints.

Conventions
- Models return logits (B,1,h,w); they are upsampled bilinearly to the target size for the loss.
- Losses are computed in float32 even under AMP.
- Metrics in ``evaluate`` are computed per image at the image's ORIGINAL size: logits are
  upsampled bilinearly to (H, W), then sigmoid and threshold.
- Empty-mask rule: Dice = IoU = 1 when both prediction and ground truth are empty,
  0 when exactly one of them is empty.  Metrics are never NaN.
"""
from __future__ import annotations

import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

# ----------------------------------------------------------------------------- metrics


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


# ----------------------------------------------------------------------------- loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch; eps smooths empty masks."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1.0 - (2.0 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


class SegLoss(torch.nn.Module):
    """``kind``: "dice+bce" = Dice + bce_weight * BCE (paper: 0.2), "dice", or "bce". Always in float32."""

    def __init__(self, kind: str = "dice+bce", bce_weight: float = 0.2):
        super().__init__()
        if kind not in ("dice+bce", "dice", "bce"):
            raise ValueError(f"unknown loss '{kind}'")
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


# ----------------------------------------------------------------------------- helpers


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def forward_batch(model, batch: dict, device: torch.device) -> torch.Tensor:
    images = batch["image"].to(device, non_blocking=True)
    tokens = model.tokenize(batch["text"], device) if getattr(model, "uses_text", True) else {}
    return model(images, **tokens)


class NonFiniteLossError(RuntimeError):
    pass


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
             original_size: bool = True, per_image: bool = False, save_fn=None, desc: str = "eval") -> dict:
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
            if original_size and "orig_mask" in batch:
                target = batch["orig_mask"][i]
            else:
                target = batch["mask"][i, 0] >= 0.5
            pred = mask_at_size(logits[i], target.shape, threshold)
            d, j = dice_iou(pred, target)
            rows.append({"dataset": batch["dataset"][i], "img_name": batch["name"][i],
                         "mask_name": batch["mask_name"][i], "prompt": batch["text"][i], "dice": d, "iou": j,
                         "gt_pixels": int(target.sum()), "pred_pixels": int(pred.sum())})
            if save_fn is not None:
                save_fn({k: (v[i] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}, pred)
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


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(model, optimizer: str = "adamw", lr: float = 2e-3, weight_decay: float = 1e-3,
                    encoder_lr: float | None = None):
    """AdamW/Adam over trainable parameters; ``encoder_lr`` puts encoder parameters in their own group."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (are all parts frozen?)")
    if encoder_lr is not None:
        enc = {id(p) for p in model.encoder_parameters() if p.requires_grad}
        groups = [{"params": [p for p in params if id(p) in enc], "lr": encoder_lr},
                  {"params": [p for p in params if id(p) not in enc], "lr": lr}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "lr": lr}]
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[optimizer]
    return cls(groups, lr=lr, weight_decay=weight_decay)


# ----------------------------------------------------------------------------- checkpoints


def atomic_torch_save(obj, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written checkpoint."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    py, npy = random.getstate(), np.random.get_state()
    state = {"python": list(py[1]), "python_pos": py[2], "numpy": npy[1].tolist(), "numpy_pos": int(npy[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_file(path: str) -> str:
    """A run folder's best.pth (else last.pth); a file path is returned as it is."""
    if not os.path.isdir(path):
        return path
    for name in ("best.pth", "last.pth"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"run folder {path} has no best.pth or last.pth")


def new_dir(explicit: str | None, default: str, exists_error: Exception) -> str:
    """Create ``explicit`` (raise ``exists_error`` if it exists) or ``default``, suffixed -1, -2, ... when taken:
    a run or results folder is never reused."""
    if explicit:
        if os.path.exists(explicit):
            raise exists_error
        path = explicit
    else:
        path, k = default, 1
        while os.path.exists(path):
            path, k = f"{default}-{k}", k + 1
    os.makedirs(path)
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``): a pickle that needs arbitrary code is refused."""
    path = checkpoint_file(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return {"model": load_file(path, device=str(map_location))}
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle.UnpicklingError and friends
        raise RuntimeError(f"refusing to load {path}: it is not a plain-tensor checkpoint that loads with "
                           f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Only load "
                           f"checkpoints you trust; convert them to safetensors or a state_dict of tensors") from None


def model_from_checkpoint(path: str, device="cpu"):
    """Rebuild a model saved by train.py (architecture from ``build_args``, weights from the file)."""
    from models import create_model
    ckpt = load_checkpoint(path)
    if "model_name" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by train.py (no 'model_name'); "
                         f"for CRIS checkpoints of the original code use --cris-checkpoint")
    model = create_model(ckpt["model_name"], **ckpt.get("build_args", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def make_grid_images(batch: dict, logits: torch.Tensor, mean, std, n: int = 4) -> torch.Tensor:
    """Rows of image | ground truth | prediction for TensorBoard, (3, rows*H, 3*W) in [0,1]."""
    imgs = batch["image"][:n].float().cpu()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    imgs = (imgs * s + m).clamp(0, 1)
    gt = batch["mask"][:n].float().cpu().repeat(1, 3, 1, 1)
    pred = torch.sigmoid(upsample_logits(logits[:n].float().cpu(), imgs.shape[-2:])).repeat(1, 3, 1, 1)
    rows = [torch.cat([imgs[i], gt[i], pred[i]], dim=2) for i in range(imgs.shape[0])]
    return torch.cat(rows, dim=1)


def run_cli(main, parser) -> None:
    """Run a script's ``main``; user-facing errors (bad files, manifests, missing weights) print one clear line
    instead of a traceback.  Set VLSM_DEBUG=1 to see the traceback."""
    from datasets import BadSampleError, ManifestError
    args = parser.parse_args()
    try:
        main(args)
    except (BadSampleError, ManifestError, FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        if os.environ.get("VLSM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
