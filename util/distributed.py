"""Multi-process training with ``torchrun``: DistributedDataParallel, sharded loaders, reductions.

    torchrun --nproc_per_node N train.py ...        (NCCL on GPUs, gloo on the CPU)

- ``--batch-size`` is per process; one optimisation step sees ``N * batch_size`` images.
- The training order is the single process's: every process draws the same permutation from the same seeded
  generator (:class:`ShardSampler`) and takes its slice of each global batch, so global batch k holds the
  images of batch k of a single process run with ``--batch-size N*B`` (DDP averages the gradients, and the
  losses are means over images, so a step is that single process's step up to float rounding).  A resume
  restores the same generator: exact, as for one process.
- Validation: each process scores every N-th image; the sums (``engine.evaluate``'s ``sums``) are all-reduced,
  so the validation Dice is the one a single process computes.
- Only rank 0 writes (run folder, logs, checkpoints, TensorBoard, the test evaluation) and prints.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function here is a cheap no-op.
"""
from __future__ import annotations

import atexit
import builtins
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def requested() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device_name: str = "auto") -> torch.device | None:
    """Join the process group torchrun set up (idempotent); returns this process's device (None when not
    distributed).  NCCL when the processes use GPUs, gloo otherwise; non-zero ranks print nothing."""
    if not requested():
        return None
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank())
    if not enabled():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(cleanup)  # after the last run of this process (a script may train several)
        _quiet_unless_main()
    return torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")


def cleanup() -> None:
    if enabled():
        dist.destroy_process_group()


def _quiet_unless_main() -> None:
    """Only rank 0 prints (``print(..., force=True)`` still prints everywhere), as in DETR/MAE."""
    real, main = builtins.print, is_main()

    def print_(*args, force: bool = False, **kw):
        if main or force:
            real(*args, **kw)
    builtins.print = print_


def barrier() -> None:
    if enabled():
        dist.barrier()


@contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (e.g. builds the data cache, generates the synthetic set), then the others."""
    if enabled() and not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if enabled() and is_main():
            dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not enabled():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Elementwise sums over processes of a dict of numbers (float64)."""
    if not enabled() or not values:
        return dict(values)
    keys = sorted(values)
    backend_cuda = dist.get_backend() == "nccl"
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=torch.device("cuda", torch.cuda.current_device()) if backend_cuda else "cpu")
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


def reduce_eval(out: dict) -> dict:
    """``engine.evaluate``'s result with means/stds over the images of all processes (from its ``sums``)."""
    if not enabled():
        return out
    s = all_reduce_sums(out["sums"])
    n = int(round(s["n"]))
    res = dict(out, n=n, sums=s, skipped=[x for part in gather_objects(out["skipped"]) for x in part])
    if n:
        for k in ("dice", "iou"):
            mean = s[k] / n
            res[k] = mean
            res[f"{k}_std"] = max(s[f"{k}_sq"] / n - mean * mean, 0.0) ** 0.5
        if "loss" in out:
            res["loss"] = s["loss"] / n
    return res


def reduce_train(stats: dict) -> dict:
    """``engine.train_one_epoch``'s result with its per-image loss means over all processes."""
    if not enabled():
        return stats
    n = stats["n_samples"]
    means = [k for k in stats if k.endswith("loss") and isinstance(stats[k], float)]
    s = all_reduce_sums({"n_samples": n, "nonfinite_steps": stats["nonfinite_steps"],
                         **{k: stats[k] * n for k in means}})
    total = int(round(s["n_samples"]))
    res = dict(stats, n_samples=total, nonfinite_steps=int(round(s["nonfinite_steps"])),
               skipped=[x for part in gather_objects(stats["skipped"]) for x in part])
    for k in means:
        res[k] = s[k] / max(total, 1)
    return res


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (unused parameters allowed: CLIP's projection and logit scale,
    BiomedCLIP's blocks after the last tapped one, take no part in segmentation)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    if not enabled() or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=True)


class ShardSampler(Sampler[int]):
    """This process's share of ``base``'s order (module docstring).

    ``batch_size`` > 0 (training): global batches of ``world * batch_size`` consecutive indices; this process
    takes slice ``rank`` of each, and with ``drop_last`` an incomplete last global batch is dropped (as a single
    process drops its incomplete batch), else split as evenly as possible (dropped when smaller than the number
    of processes, so that every process makes the same number of steps).
    ``batch_size`` = 0 (evaluation): every ``world``-th index, no padding (no collective runs inside evaluation).
    """

    def __init__(self, base, batch_size: int = 0, drop_last: bool = False, rank_: int | None = None,
                 world: int | None = None):
        self.base = base
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world

    def _share(self, order: list[int]) -> list[int]:
        r, w, b = self.rank, self.world, self.batch_size
        if b <= 0:
            return order[r::w]
        g = b * w
        out = []
        for k in range(0, len(order), g):
            chunk = order[k:k + g]
            if len(chunk) == g:
                out += chunk[r * b:(r + 1) * b]
            elif not self.drop_last and len(chunk) >= w:
                out += chunk[r::w]
        return out

    def __iter__(self):
        return iter(self._share(list(iter(self.base))))

    def __len__(self) -> int:
        return len(self._share(list(range(len(self.base)))))
