"""Model registry: one record per model, ``create_model(name, weights=..., size=..., **cfg)`` and
``model_from_checkpoint(path)``.

A :class:`ModelSpec` holds every fact about a model that the scripts need: the builder, its default
pretrained weights and where they come from, input size, normalisation, default threshold, whether it
reads text, and the paper's training presets.  Scripts read the record; nothing is repeated elsewhere.
Builders live in their own modules and are imported lazily, so a missing optional dependency of one model
never breaks the others.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from vlsm.checkpoint import load_checkpoint

from .base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, SegModel

# Paper presets.  Keys understood by vlsm.optim.build_optimizer / vlsm.losses.SegLoss / the model config:
#   optimizer, lr, weight_decay, encoder_lr (optional separate lr for encoders),
#   loss ("dice+bce" | "dice" | "bce"), bce_weight, batch_size, dropout (model cfg)
VLSM_MIDL = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-3, loss="dice+bce", bce_weight=0.2, batch_size=128)
VLSM_ARXIV = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, loss="dice+bce", bce_weight=0.2, batch_size=16)
CNN_PRESET = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, loss="dice", bce_weight=0.0, batch_size=16)
VLSM_PRESETS = {"midl": VLSM_MIDL, "arxiv": VLSM_ARXIV}
CNN_PRESETS = {"midl": CNN_PRESET, "arxiv": CNN_PRESET}

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CLIPSEG_HUB_ID = "CIDAS/clipseg-rd64-refined"


@dataclass(frozen=True)
class ModelSpec:
    builder: str                  # "module:function"; function(weights=..., size=..., **cfg) -> SegModel
    default_weights: str          # what --weights auto means for size=base
    weights_source: str           # where the default weights come from, in words
    input_size: int               # the paper's input size (size=base)
    mean: tuple
    std: tuple
    uses_text: bool = True
    threshold: float = 0.5        # probability threshold for metrics and masks
    presets: dict = field(default_factory=dict)
    fetch: str = ""               # the command that fetches the default weights on a connected machine


MODEL_SPECS: dict[str, ModelSpec] = {
    "clipseg": ModelSpec(
        "models.clipseg:build_clipseg", CLIPSEG_HUB_ID, f"Hugging Face hub repo {CLIPSEG_HUB_ID} (transformers)",
        352, IMAGENET_MEAN, IMAGENET_STD, presets=VLSM_PRESETS,
        fetch=f"hf download {CLIPSEG_HUB_ID} --local-dir clipseg-rd64-refined"),
    "cris": ModelSpec(
        "models.cris:build_cris", "openai", "OpenAI CLIP RN50 through open_clip (the CLIP backbone only)",
        416, CLIP_MEAN, CLIP_STD, threshold=0.35,
        presets={"midl": dict(VLSM_MIDL, lr=2e-5, batch_size=32),
                 "arxiv": dict(optimizer="adamw", lr=1e-5, encoder_lr=1e-6, weight_decay=1e-3,
                               loss="bce", bce_weight=1.0, batch_size=32, dropout=0.2)},
        fetch="hf download timm/resnet50_clip.openai --local-dir clip-rn50"),
    "biomedclipseg": ModelSpec(
        "models.biomedclipseg:build_biomedclipseg", f"hf-hub:{BIOMEDCLIP_HUB_ID}",
        f"Hugging Face hub repo {BIOMEDCLIP_HUB_ID} (open_clip); decoder random", 224, CLIP_MEAN, CLIP_STD,
        presets=VLSM_PRESETS, fetch=f"hf download {BIOMEDCLIP_HUB_ID} --local-dir biomedclip"),
    "biomedclipseg_d": ModelSpec(
        "models.biomedclipseg:build_biomedclipseg_d", f"hf-hub:{BIOMEDCLIP_HUB_ID}",
        f"{BIOMEDCLIP_HUB_ID} encoders + the decoder of {CLIPSEG_HUB_ID}", 224, CLIP_MEAN, CLIP_STD,
        presets=VLSM_PRESETS, fetch=f"hf download {BIOMEDCLIP_HUB_ID} --local-dir biomedclip"),
    "unet": ModelSpec(
        "models.smp_models:build_unet", "imagenet", "ImageNet ResNet-50 (smp-hub/resnet50.imagenet)", 352,
        IMAGENET_MEAN, IMAGENET_STD, uses_text=False, presets=CNN_PRESETS,
        fetch="hf download smp-hub/resnet50.imagenet"),
    "unetplusplus": ModelSpec(
        "models.smp_models:build_unetplusplus", "imagenet", "ImageNet ResNet-50 (smp-hub/resnet50.imagenet)", 352,
        IMAGENET_MEAN, IMAGENET_STD, uses_text=False, presets=CNN_PRESETS,
        fetch="hf download smp-hub/resnet50.imagenet"),
    "deeplabv3plus": ModelSpec(
        "models.smp_models:build_deeplabv3plus", "imagenet", "ImageNet ResNet-50 (smp-hub/resnet50.imagenet)",
        352, IMAGENET_MEAN, IMAGENET_STD, uses_text=False, presets=CNN_PRESETS,
        fetch="hf download smp-hub/resnet50.imagenet"),
}


WEIGHT_OPTIONS = {"cris_checkpoint", "clipseg_weights"}  # options that only load weights


def list_models() -> list[str]:
    return list(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def get_preset(name: str, preset: str = "midl") -> dict:
    spec = get_spec(name)
    if preset not in spec.presets:
        raise ValueError(f"model '{name}' has no preset '{preset}'; choose one of: {', '.join(spec.presets)}")
    return dict(spec.presets[preset])


def resolve_weights(name: str, weights: str | None, size: str) -> str | None:
    """``auto`` -> the record's default weights for size=base, random init (None) for tiny; 'none' -> None."""
    if weights is None or str(weights).lower() == "none":
        return None
    if weights == "auto":
        return get_spec(name).default_weights if size == "base" else None
    return weights


def create_model(name: str, weights: str | None = None, size: str = "base",
                 freeze_image_encoder: bool = False, freeze_text_encoder: bool = False, **cfg) -> SegModel:
    """Build a registered model.

    weights: None/"none" = random init; "auto" = the record's default (base) / none (tiny); otherwise a hub id,
    local folder or file understood by the builder.
    size: "base" (the paper's architecture) or "tiny" (small random config for tests and the demo).
    """
    spec = get_spec(name)
    module_name, fn_name = spec.builder.split(":")
    try:
        builder = getattr(importlib.import_module(module_name), fn_name)
    except ImportError as e:
        raise ImportError(f"model '{name}' is unavailable: {e}") from e
    weights = resolve_weights(name, weights, size)
    model = builder(weights=weights, size=size, **cfg)
    model.name = name
    model.default_threshold = spec.threshold
    model.uses_text = spec.uses_text
    # How to rebuild the architecture without loading weights again (checkpoints carry the weights):
    # weight-loading options are dropped; a builder may add what the skeleton needs (model.extra_build_args).
    skeleton_cfg = {k: v for k, v in cfg.items() if k not in WEIGHT_OPTIONS}
    model.build_args = {"weights": None, "size": size, **skeleton_cfg, **getattr(model, "extra_build_args", {})}
    if freeze_image_encoder or freeze_text_encoder:
        model.freeze(image=freeze_image_encoder, text=freeze_text_encoder)
    return model


def model_from_checkpoint(path: str, device="cpu"):
    """Rebuild a model saved by train.py (architecture from ``build_args``, weights from the file), like timm's
    ``load_checkpoint``.  Returns (model, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    if "model_name" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by train.py (no 'model_name'); "
                         f"for CRIS checkpoints of the original code use --cris-checkpoint")
    model = create_model(ckpt["model_name"], **ckpt.get("build_args", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt
