"""CRIS weights on disk: state dicts and checkpoints in the original CRIS naming and format, and OpenAI's
CLIP RN50 weights for the backbone.  Every file is read through :mod:`util.checkpoint` (never unpickles code)."""
from __future__ import annotations

import os
import re
from collections import OrderedDict

import torch
from open_clip.pretrained import download_pretrained, get_pretrained_cfg

from util.checkpoint import atomic_torch_save, load_torch_file, read_state_dict, strip_key_prefixes

from ..hub import download_command, offline
from .model import CRIS

# where OpenAI's RN50 weights come from, as open_clip records it (its download uses the same record)
_OPENAI_RN50 = get_pretrained_cfg("RN50", "openai")
OPENAI_RN50_URL = _OPENAI_RN50["url"]
OPENAI_RN50_HF_REPO = _OPENAI_RN50["hf_hub"].rstrip("/")
OPENAI_RN50_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# keys a CLIP file may carry besides the weights (OpenAI metadata; TorchScript keeps open_clip's causal mask)
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _list(keys, n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --------------------------------------------------------------------------------------------
# state dicts and checkpoints in the original naming
# --------------------------------------------------------------------------------------------
_RESBLOCK_PART_ORDER = ("attn.", "ln_1.", "mlp.", "ln_2.")  # original CLIP's registration order
_RESBLOCK_RE = re.compile(r"^(.*transformer\.resblocks\.\d+\.)")


def original_key_order(keys: list[str]) -> list[str]:
    """Reorder keys as the original code lists them: open_clip registers a text block's ``ln_1`` before
    ``attn``, OpenAI's CLIP (used by CRIS) after it.  Only the order inside each text block changes."""
    out, i = [], 0
    rank = {p: r for r, p in enumerate(_RESBLOCK_PART_ORDER)}
    while i < len(keys):
        m = _RESBLOCK_RE.match(keys[i])
        if not m:
            out.append(keys[i])
            i += 1
            continue
        prefix, group = m.group(1), []
        while i < len(keys) and keys[i].startswith(prefix):
            group.append(keys[i])
            i += 1
        group.sort(key=lambda k: next((r for p, r in rank.items() if k[len(prefix):].startswith(p)), len(rank)))
        out += group
    return out


def export_original_state_dict(model: CRIS) -> OrderedDict[str, torch.Tensor]:
    """The state dict in the original CRIS naming and key order (unwrapped, no ``module.``), detached on CPU.

    The project's module names are the original ones, so the mapping is the identity."""
    sd = model.state_dict()
    return OrderedDict((k, sd[k].detach().cpu()) for k in original_key_order(list(sd)))


def load_original_state_dict(model: CRIS, state_dict: dict, source: str = "state dict") -> CRIS:
    """Load a state dict in the original naming (``module.`` prefixes stripped), strictly.

    Raises ``KeyError`` listing missing/unexpected keys, ``ValueError`` listing shape mismatches."""
    sd = strip_key_prefixes(state_dict, ("module.",))
    own = model.state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise KeyError(f"{source} does not match this CRIS ({len(own)} keys; is it a CRIS state dict of the same "
                       f"size?): missing {len(missing)} [{_list(missing)}]; unexpected {len(unexpected)} "
                       f"[{_list(unexpected)}]")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{source} has {len(bad)} tensors of the wrong shape (built with another config?): "
                         + "; ".join(bad[:6]))
    model.load_state_dict(sd, strict=True)
    return model


def load_cris_checkpoint(model: CRIS, path: str) -> dict:
    """Load a checkpoint of the original CRIS training code (``{'state_dict': {'module.…': …}, 'epoch', …}``),
    a project checkpoint with ``state_dict``/``model``, or a bare state dict.  Returns the other entries."""
    ckpt = load_torch_file(path, "CRIS checkpoint")
    if not isinstance(ckpt, dict):  # a file holding the wrong thing is a bad value, as in util.checkpoint
        raise ValueError(f"CRIS checkpoint '{path}' holds a {type(ckpt).__name__}, expected a dict")  # noqa: TRY004
    for key in ("state_dict", "model"):
        if isinstance(ckpt.get(key), dict):
            sd, meta = ckpt[key], {k: v for k, v in ckpt.items() if k != key}
            break
    else:
        if not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ValueError(f"CRIS checkpoint '{path}' has no 'state_dict' entry (keys: {_list(ckpt)})")
        sd, meta = ckpt, {}
    load_original_state_dict(model, sd, source=f"CRIS checkpoint '{path}'")
    return meta


def save_cris_checkpoint(model: CRIS, path: str, epoch: int = 0, cur_iou: float = 0.0, best_iou: float = 0.0,
                         prec: dict | None = None, **extra) -> str:
    """Write the original training code's format: ``state_dict`` keys prefixed ``module.`` (as DDP saved
    them), plus ``epoch``, ``cur_iou``, ``best_iou``, ``prec``; ``extra`` (e.g. optimizer/scheduler state
    dicts) is stored as given.  The original ``test.py`` can load the result."""
    sd = OrderedDict(("module." + k, v) for k, v in export_original_state_dict(model).items())
    prec = prec if prec is not None else {f"Pr@{t}": 0.0 for t in (50, 60, 70, 80, 90)}
    atomic_torch_save(dict(epoch=int(epoch), cur_iou=float(cur_iou), best_iou=float(best_iou), prec=prec,
                           state_dict=sd, **extra), path)
    return path


# --------------------------------------------------------------------------------------------
# OpenAI CLIP RN50 weights
# --------------------------------------------------------------------------------------------
def _cached_openai_rn50() -> str | None:
    """RN50 weights already on disk: open_clip's URL cache or the Hugging Face cache (no network)."""
    url_cache = os.path.join(os.path.expanduser("~/.cache/clip"), "RN50.pt")
    if os.path.isfile(url_cache):
        return url_cache
    from huggingface_hub import try_to_load_from_cache
    cache_dir = os.environ.get("HF_HUB_CACHE")
    for name in OPENAI_RN50_HF_FILES:
        hit = try_to_load_from_cache(OPENAI_RN50_HF_REPO, name, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def resolve_openai_rn50() -> str:
    """Path of OpenAI's CLIP RN50 weights: cached, else downloaded through open_clip (unless offline)."""
    hit = _cached_openai_rn50()
    if hit:
        return hit
    help_text = (f"Download RN50.pt ({OPENAI_RN50_URL}) on a machine with internet, copy it here and pass "
                 f"--weights /path/RN50.pt (or put it in ~/.cache/clip/); or there run "
                 f"`{download_command(OPENAI_RN50_HF_REPO, 'clip-rn50')}`, copy the folder here and pass "
                 f"--weights clip-rn50/{OPENAI_RN50_HF_FILES[0]} (or {OPENAI_RN50_HF_FILES[1]}); "
                 f"or use --weights none.")
    if offline():
        raise FileNotFoundError(f"CLIP RN50 weights ('openai') are not cached and downloads are off "
                                f"(HF_HUB_OFFLINE/VLSM_OFFLINE, or huggingface.co unreachable). {help_text}")
    try:
        return download_pretrained(_OPENAI_RN50)
    except Exception as e:
        raise FileNotFoundError(f"could not get CLIP RN50 weights ('openai'): {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}. {help_text}") from e


def read_clip_state_dict(path: str) -> dict:
    """OpenAI TorchScript archive (``RN50.pt``), safetensors, or a (safe) torch state dict -> float32 dict
    in OpenAI/open_clip naming.  ``module.``, ``backbone.`` and ``clip.`` prefixes and OpenAI's metadata
    entries are dropped."""
    sd = read_state_dict(path, "CLIP weights", strip_prefixes=("module.", "backbone.", "clip."),
                         unwrap=("state_dict",), allow_torchscript=True)
    return OrderedDict((k, v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                       for k, v in sd.items() if k not in OPENAI_META_KEYS)


def load_clip_weights(model: CRIS, path: str) -> CRIS:
    """Load a CLIP weights file into ``model.backbone``; only ``visual.attnpool.connect.*`` (new in CRIS) may be
    missing."""
    sd = read_clip_state_dict(path)
    own = model.backbone.state_dict()
    new_in_cris = {k for k in own if k.startswith("visual.attnpool.connect.")}
    missing, unexpected = set(own) - set(sd) - new_in_cris, set(sd) - set(own)
    if missing or unexpected:
        raise KeyError(f"'{path}' is not a CLIP RN50-style state dict for this CRIS: missing {len(missing)} "
                       f"[{_list(missing)}]; unexpected {len(unexpected)} [{_list(unexpected)}]")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd
           if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"CLIP weights '{path}' do not fit this CRIS size ({len(bad)} shape mismatches, e.g. "
                         + "; ".join(bad[:4]) + "). OpenAI RN50 weights need size='base'.")
    model.backbone.load_state_dict(sd, strict=False)
    return model
