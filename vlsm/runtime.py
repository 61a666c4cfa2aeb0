"""Where and how a model runs: device choice, seeding, mixed precision, and one forward pass of a batch."""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """fp16 autocast on CUDA when enabled; nothing on the CPU (where it does not help)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def forward_batch(model, batch: dict, device: torch.device) -> torch.Tensor:
    """Logits for a collated batch: images to the device, prompts tokenized (text-free models skip that)."""
    images = batch["image"].to(device, non_blocking=True)
    tokens = model.tokenize(batch["text"], device) if getattr(model, "uses_text", True) else {}
    return model(images, **tokens)
