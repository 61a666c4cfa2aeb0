"""BiomedCLIP encoder weights on disk: find the open_clip folder (local path or cached hub id), read its
config, and load / save the encoders in open_clip's layout."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from util.checkpoint import atomic_torch_save, read_state_dict

from ..hub import download_command, hub_file
from ..registry import BIOMEDCLIP_HUB_ID
from .model import BiomedCLIPSeg

logger = logging.getLogger(__name__)

BIOMEDCLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# tensors of an open_clip BiomedCLIP checkpoint that these encoders do not have (BERT's unused pooler)
IGNORED_SUFFIXES = ("position_ids", "text.transformer.pooler.dense.weight", "text.transformer.pooler.dense.bias")


def resolve_biomedclip_folder(weights: str) -> Path:
    """A folder with ``open_clip_config.json`` + weights, from a local path or a (cached) hub id."""
    p = Path(weights).expanduser()
    if p.is_dir():
        if not (p / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"BiomedCLIP folder '{p}' has no open_clip_config.json (expected a snapshot of "
                                    f"hf.co/{BIOMEDCLIP_HUB_ID})")
        return p
    if p.exists():
        raise ValueError(f"BiomedCLIP weights '{weights}' is a file; give the folder holding open_clip_config.json "
                         f"and the weights, or the hub id hf-hub:{BIOMEDCLIP_HUB_ID}")
    repo = weights.removeprefix("hf-hub:")
    hint = (f"On a machine with internet run `{download_command(repo, 'biomedclip')}`, copy the folder here and pass "
            f"it as --weights PATH (it holds open_clip_config.json, open_clip_pytorch_model.bin, vocab.txt); or "
            f"copy that machine's Hugging Face cache here.")
    cfg = hub_file(repo, "open_clip_config.json", "BiomedCLIP weights", hint)
    folder = Path(cfg).parent
    if not any((folder / f).is_file() for f in BIOMEDCLIP_FILES):
        hub_file(repo, "open_clip_pytorch_model.bin", "BiomedCLIP weights", hint)
    if not (folder / "vocab.txt").is_file():
        try:
            hub_file(repo, "vocab.txt", "BiomedCLIP tokenizer", hint)
        except FileNotFoundError:  # the model still builds; tokenizing then says what is missing
            pass
    return folder


def read_open_clip_config(folder: Path, defaults: dict, size: str = "base") -> dict:
    """A copy of the size config ``defaults`` updated from ``folder/open_clip_config.json``.

    The architecture is fixed by ``size`` (BiomedCLIP's for "base"); the file may change the image
    size and text context length, and must not name another vision tower or text projection."""
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    sc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    vcfg, tcfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if size == "base" and vcfg.get("timm_model_name", "vit_base_patch16_224") != "vit_base_patch16_224":
        raise ValueError(f"{folder}/open_clip_config.json: vision tower {vcfg['timm_model_name']!r} is not "
                         f"supported (only BiomedCLIP's vit_base_patch16_224)")
    if tcfg.get("hf_proj_type", "mlp") != "mlp":
        raise ValueError(f"{folder}/open_clip_config.json: text projection {tcfg['hf_proj_type']!r} unsupported")
    if model_cfg.get("embed_dim", sc["embed_dim"]) != sc["embed_dim"]:
        raise ValueError(f"{folder}/open_clip_config.json: embed_dim {model_cfg['embed_dim']} does not match the "
                         f"{size} architecture ({sc['embed_dim']})")
    sc["vision"]["img_size"] = vcfg.get("image_size", sc["vision"]["img_size"])
    sc["context_length"] = tcfg.get("context_length", sc["context_length"])
    return sc


def save_biomedclip_encoders(model: BiomedCLIPSeg, folder: str | os.PathLike) -> Path:
    """Write ``model``'s encoders as an open_clip-style BiomedCLIP folder (config, weights, vocab.txt)
    that ``weights=folder`` loads back; used by the tests and to export fine-tuned encoders."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sc = {"embed_dim": model.visual.head.proj.out_features,
          "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_pool": "", "timm_proj": "linear",
                         "image_size": model.visual.trunk.patch_embed.img_size[0]},
          "text_cfg": {"hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                       "context_length": getattr(model.tokenizer, "context_length", 256)}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": sc}, indent=2))
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    state.update({f"text.{k}": v for k, v in model.text.state_dict().items()})
    state["logit_scale"] = torch.tensor(4.6052)
    atomic_torch_save(state, str(folder / "open_clip_pytorch_model.bin"))
    vocab = getattr(model.tokenizer, "vocab_file", None)
    if vocab and Path(vocab).resolve() != (folder / "vocab.txt").resolve():
        shutil.copy(vocab, folder / "vocab.txt")
    return folder


def load_biomedclip_weights(model: BiomedCLIPSeg, folder: Path) -> None:
    """Load an open_clip BiomedCLIP checkpoint into ``model.visual`` / ``model.text`` (strict, explained)."""
    path = next((folder / f for f in BIOMEDCLIP_FILES if (folder / f).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no BiomedCLIP weights in '{folder}': expected one of {', '.join(BIOMEDCLIP_FILES)}")
    state = read_state_dict(str(path), "BiomedCLIP weights", strip_prefixes=("module.",), unwrap=("state_dict",))
    ours = {k: v for k, v in state.items() if k.startswith(("visual.", "text.")) and not k.endswith(IGNORED_SUFFIXES)}
    ignored = sorted(set(state) - set(ours))
    encoders = nn.ModuleDict({"visual": model.visual, "text": model.text})
    missing, unexpected = encoders.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"BiomedCLIP checkpoint {path} does not match the architecture: "
                           f"missing {missing[:8]}, unexpected {list(unexpected)[:8]}")
    logger.info("loaded BiomedCLIP encoders from %s (%d tensors; ignored: %s)", path, len(ours), ignored)
