"""Optimiser and learning-rate schedule from the resolved training options."""
from __future__ import annotations

import torch


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


def build_scheduler(optimizer, kind: str = "plateau", patience: int = 5):
    """ReduceLROnPlateau (x0.1 on validation loss), or a constant rate (``kind='constant'``)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=patience)
