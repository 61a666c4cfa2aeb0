"""Files that hold weights: one safe state-dict reader for every loader, atomic saves, RNG state,
run/results folders that are never reused, and checkpoint resolution (``last``, a run folder, a file).

``Checkpointer`` (in the spirit of timm's ``CheckpointSaver``) writes a run's ``last.pth`` / ``best.pth`` /
``interrupted.pth`` atomically, so no run ever loses a finished checkpoint.
"""
from __future__ import annotations

import os
import random
import zipfile
from collections import OrderedDict

import numpy as np
import torch

from .io import atomic_output

LAST_RUN_FILE = "last_run.txt"


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str, what: str = "weights", strip_prefixes: tuple[str, ...] = (),
                    unwrap: tuple[str, ...] = ("state_dict", "model"), allow_torchscript: bool = False) -> dict:
    """File -> dict of tensors, safely: safetensors, or ``torch.load(weights_only=True)`` (a pickle that needs
    code is refused with a message), or (``allow_torchscript``) an OpenAI TorchScript archive.

    A checkpoint dict holding the weights under one of ``unwrap`` is unwrapped; each key loses the first of
    ``strip_prefixes`` it starts with (repeatedly, so ``module.backbone.`` goes with both listed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    elif allow_torchscript and zipfile.is_zipfile(path) and any(
            n.endswith("constants.pkl") or "/code/" in n for n in zipfile.ZipFile(path).namelist()):
        sd = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        sd = load_torch_file(path, what)
    if isinstance(sd, dict):
        for key in unwrap:
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise ValueError(f"{what} file '{path}' does not hold a state dict (got {type(sd).__name__})")
    return strip_key_prefixes(sd, strip_prefixes) if strip_prefixes else sd


def strip_key_prefixes(sd: dict, prefixes: tuple[str, ...] = ("module.",)) -> "OrderedDict":
    out = OrderedDict()
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_torch_file(path: str, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(weights_only=True)`` with a clear error: a pickle that needs arbitrary code is refused."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends, or not a torch file
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise ValueError(f"refusing to load {what} '{path}': it is not a plain-tensor file that loads with "
                         f"torch.load(weights_only=True) ({type(e).__name__}: {first}). Only load files you trust; "
                         f"re-save just the weights where it was made, e.g. torch.save({{'state_dict': "
                         f"ckpt['state_dict']}}, 'clean.pth'), or convert to safetensors") from None


# ----------------------------------------------------------------------------- writing


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` through a temporary file, fsync and rename: never a half-written checkpoint."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def state_dict_sha256(module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes in key order): the identity of a set of
    weights, e.g. the base model a parameter-efficient run was trained on."""
    import hashlib
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


class Checkpointer:
    """A run folder's checkpoints: ``save(state, best=)`` writes last.pth (and best.pth) atomically;
    ``save_interrupted`` keeps the half-done epoch's weights apart (never resumed from)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def save(self, state: dict, best: bool = False) -> None:
        if best:
            atomic_torch_save(state, self.path("best.pth"))
        atomic_torch_save(state, self.path("last.pth"))

    def save_interrupted(self, state: dict, epoch: int) -> str:
        weights_only = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "scaler")}
        atomic_torch_save({**weights_only, "interrupted_in_epoch": epoch}, self.path("interrupted.pth"))
        return self.path("interrupted.pth")

    def save_best_field(self, key: str, value) -> None:
        """Set one entry of best.pth (e.g. the threshold chosen after training), atomically."""
        ckpt = load_checkpoint(self.path("best.pth"))
        ckpt[key] = value
        atomic_torch_save(ckpt, self.path("best.pth"))

    def load_last(self) -> dict:
        return load_checkpoint(self.path("last.pth"))


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by train.py (a run folder means its best.pth, else last.pth), or a safetensors file
    (returned as ``{"model": tensors}``)."""
    path = checkpoint_file(path)
    if path.endswith(".safetensors"):
        return {"model": read_state_dict(path, "checkpoint", unwrap=())}
    ckpt = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


# ----------------------------------------------------------------------------- folders


def checkpoint_file(path: str) -> str:
    """A run folder's best.pth (else last.pth, else the folder itself when it holds config.json +
    model.safetensors); a file path is returned as it is."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path} not found")
        return path
    for name in ("best.pth", "last.pth"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    if all(os.path.exists(os.path.join(path, f)) for f in ("config.json", "model.safetensors")):
        return path  # a run folder copied without its .pth files: models.model_from_checkpoint reads it
    raise FileNotFoundError(f"run folder {path} has no best.pth, last.pth or config.json + model.safetensors")


def resolve_checkpoint(path: str, output_dir: str = "runs") -> tuple[str, str]:
    """``--checkpoint`` value -> (checkpoint file, run folder).  ``last`` = the run named in
    ``<output_dir>/last_run.txt``."""
    if path == "last":
        marker = os.path.join(output_dir, LAST_RUN_FILE)
        if not os.path.exists(marker):
            raise FileNotFoundError(f"--checkpoint last: {marker} not found; train a model first "
                                    f"(python train.py) or pass a run folder")
        path = open(marker).read().strip()
    file = checkpoint_file(path)
    return file, path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def write_last_run(output_dir: str, run_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, LAST_RUN_FILE), "w") as f:
        f.write(run_dir + "\n")


def new_dir(explicit: str | None, default: str, what: str = "results") -> str:
    """Create ``explicit`` (refused if it exists) or ``default``, suffixed -1, -2, ... when taken:
    a run or results folder is never reused."""
    if explicit:
        if os.path.exists(explicit):
            raise FileExistsError(f"{explicit} exists; {what} are never overwritten: choose another --out")
        path = explicit
    else:
        path, k = default, 1
        while os.path.exists(path):
            path, k = f"{default}-{k}", k + 1
    os.makedirs(path)
    return path
