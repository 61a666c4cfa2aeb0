"""Where and how a model runs: device choice, seeding, mixed precision, and one forward pass of a batch.

Images arrive either normalised (float, the per-sample path) or as uint8 from the data cache
(datasets/cache.py); :func:`prepare_images` normalises uint8 images on the device with the model's own
mean/std, so every consumer of ``batch["image"]`` goes through it (or :func:`forward_batch`).  Prompts are
tokenized once per distinct text and model (:func:`tokenize_cached`).
"""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch

TOKEN_CACHE_LIMIT = 200_000  # distinct prompts kept per model (a manifest has far fewer)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it (no loss scaling needed), fp16 otherwise (with a GradScaler)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool):
    """bf16 (or fp16) autocast on CUDA when enabled; nothing on the CPU (where it does not help)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return nullcontext()


def unwrap(model):
    """The model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


_STATS: dict = {}


def _stats(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (tuple(float(m) for m in mean), tuple(float(s) for s in std), str(device))
    if key not in _STATS:
        with torch.inference_mode(False):
            _STATS[key] = (torch.tensor(key[0], device=device).view(1, 3, 1, 1),
                           torch.tensor(key[1], device=device).view(1, 3, 1, 1))
    return _STATS[key]


def prepare_images(images: torch.Tensor, model, device: torch.device) -> torch.Tensor:
    """Images for ``model`` on ``device``: uint8 (the data cache) are scaled to [0, 1] and normalised with the
    model's mean/std there (the same operations as ``SegTransform``); float images are taken as normalised.
    Models with ``channels_last`` set get that memory format."""
    x = images.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        base = unwrap(model)
        mean, std = _stats(base.image_mean, base.image_std, x.device)
        x = x.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
    if getattr(unwrap(model), "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def tokenize_cached(model, texts: list[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """``model.tokenize(texts)``, tokenizing each distinct text once per model.  Rows are padded to the longest
    text of the batch with the tokenizer's pad id (what a tokenizer that pads to the longest does; fixed-length
    tokenizers give equal rows anyway)."""
    base = unwrap(model)
    tok = getattr(base, "tokenizer", None)
    if tok is None:
        return base.tokenize(list(texts), device)
    cache = base.__dict__.get("_token_cache")
    if cache is None or cache[0] is not tok:
        cache = (tok, {})
        base.__dict__["_token_cache"] = cache
    rows = cache[1]
    missing = [t for t in dict.fromkeys(texts) if t not in rows]
    if missing:
        if len(rows) + len(missing) > TOKEN_CACHE_LIMIT:
            rows.clear()
        with torch.inference_mode(False):  # cached rows must stay usable outside inference mode
            for t in missing:
                out = base.tokenize([t])
                rows[t] = {k: v[0].clone() for k, v in out.items()}
    pad = int(getattr(tok, "pad_id", 0))
    first = rows[texts[0]]
    out = {}
    for k in first:
        seqs = [rows[t][k] for t in texts]
        width = max(s.shape[0] for s in seqs)
        if all(s.shape[0] == width for s in seqs):
            out[k] = torch.stack(seqs)
        else:
            fill = pad if k == "input_ids" else 0
            out[k] = torch.stack([torch.nn.functional.pad(s, (0, width - s.shape[0]), value=fill) for s in seqs])
    if device is not None:
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out


def loss_is_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite, on every process under torchrun (so that all of them skip the same steps
    and none waits alone for the others' gradients)."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def forward_batch(model, batch: dict, device: torch.device) -> torch.Tensor:
    """Logits for a collated batch: images to the device (normalised there when uint8), prompts tokenized
    (cached; text-free models skip that).  A batch carrying ``features`` (the frozen-encoder feature cache,
    vlsm/feature_cache.py) goes to ``model(**features)``: the decoder only."""
    if "features" in batch:
        return model(**{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                        for k, v in batch["features"].items()})
    images = prepare_images(batch["image"], model, device)
    tokens = tokenize_cached(model, batch["text"], device) if getattr(unwrap(model), "uses_text", True) else {}
    # batch fields a model asks for by name (a --multiclass CNN: each record's class channel, "target_index")
    extra = {k: torch.as_tensor(batch[k], device=device) for k in getattr(unwrap(model), "batch_fields", ())
             if k in batch}
    return model(images, **tokens, **extra)
