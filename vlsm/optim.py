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


#: The schedules ``--scheduler`` offers (stepped once per epoch; plateau on the validation loss).
SCHEDULERS = ("plateau", "constant", "cosine")


def build_scheduler(optimizer, kind: str = "plateau", patience: int = 5, epochs: int = 1000, factor: float = 0.1):
    """ReduceLROnPlateau (x0.1 on validation loss), a constant rate (``constant``), or cosine annealing from the
    initial rate to 0 over ``epochs`` epochs (``cosine``: CosineAnnealingLR with T_max = epochs, one of the
    schedules of the paper's search, its Table 4)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(epochs)))
    if kind != "plateau":
        raise ValueError(f"unknown scheduler {kind!r}; choose from {', '.join(SCHEDULERS)}")
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)
