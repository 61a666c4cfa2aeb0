"""Model registry: ``create_model(name, weights=..., size=..., **cfg)``.

Builders live in their own modules and are imported lazily, so a missing optional
dependency of one model never breaks the others.  Each entry also carries the
paper's training presets (``midl`` = MIDL 2024 main text, ``arxiv`` = extended version).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .base import SegModel

# Paper presets.  Keys understood by engine.build_optimizer / the loss:
#   optimizer, lr, weight_decay, encoder_lr (optional separate lr for encoders),
#   loss ("dice+bce" | "dice" | "bce"), bce_weight, batch_size, threshold, dropout (model cfg)
VLSM_MIDL = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-3, loss="dice+bce", bce_weight=0.2, batch_size=128)
VLSM_ARXIV = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, loss="dice+bce", bce_weight=0.2, batch_size=16)
CNN_PRESET = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, loss="dice", bce_weight=0.0, batch_size=16)


@dataclass
class ModelSpec:
    builder: str                      # "module:function"; function(weights=..., size=..., **cfg) -> SegModel
    input_size: int
    description: str
    presets: dict = field(default_factory=dict)


MODEL_SPECS: dict[str, ModelSpec] = {
    "clipseg": ModelSpec("models.clipseg:build_clipseg", 352,
                         "CLIPSeg (CLIP ViT-B/16 + FiLM decoder), transformers CLIPSegForImageSegmentation",
                         {"midl": VLSM_MIDL, "arxiv": VLSM_ARXIV}),
    "cris": ModelSpec("models.cris:build_cris", 416,
                      "CRIS (CLIP RN50 + text-fused FPN + transformer decoder + dynamic-kernel projector)",
                      {"midl": dict(VLSM_MIDL, lr=2e-5, batch_size=32, threshold=0.35),
                       "arxiv": dict(optimizer="adamw", lr=1e-5, encoder_lr=1e-6, weight_decay=1e-3,
                                     loss="bce", bce_weight=1.0, batch_size=32, threshold=0.35, dropout=0.2)}),
    "biomedclipseg": ModelSpec("models.biomedclipseg:build_biomedclipseg", 224,
                               "BiomedCLIP encoders (open_clip) + CLIPSeg-style decoder, random init",
                               {"midl": VLSM_MIDL, "arxiv": VLSM_ARXIV}),
    "biomedclipseg_d": ModelSpec("models.biomedclipseg:build_biomedclipseg_d", 224,
                                 "BiomedCLIP encoders + decoder initialised from pretrained CLIPSeg",
                                 {"midl": VLSM_MIDL, "arxiv": VLSM_ARXIV}),
    "unet": ModelSpec("models.smp_models:build_unet", 352, "UNet, ResNet-50 encoder (smp); text ignored",
                      {"midl": CNN_PRESET, "arxiv": CNN_PRESET}),
    "unetplusplus": ModelSpec("models.smp_models:build_unetplusplus", 352,
                              "UNet++, ResNet-50 encoder (smp); text ignored", {"midl": CNN_PRESET, "arxiv": CNN_PRESET}),
    "deeplabv3plus": ModelSpec("models.smp_models:build_deeplabv3plus", 352,
                               "DeepLabV3+, ResNet-50 encoder (smp); text ignored",
                               {"midl": CNN_PRESET, "arxiv": CNN_PRESET}),
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


def create_model(name: str, weights: str | None = None, size: str = "base",
                 freeze_image_encoder: bool = False, freeze_text_encoder: bool = False, **cfg) -> SegModel:
    """Build a registered model.

    weights: None/"none" = random init; otherwise a hub id, local folder or file understood by the builder.
    size: "base" (the paper's architecture) or "tiny" (small random config for tests and the demo).
    """
    spec = get_spec(name)
    module_name, fn_name = spec.builder.split(":")
    try:
        builder = getattr(importlib.import_module(module_name), fn_name)
    except ImportError as e:
        raise ImportError(f"model '{name}' is unavailable: {e}") from e
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    model = builder(weights=weights, size=size, **cfg)
    model.name = name
    # How to rebuild the architecture without loading weights again (checkpoints carry the weights):
    # weight-loading options are dropped; a builder may add what the skeleton needs (model.extra_build_args).
    skeleton_cfg = {k: v for k, v in cfg.items() if k not in WEIGHT_OPTIONS}
    model.build_args = {"weights": None, "size": size, **skeleton_cfg, **getattr(model, "extra_build_args", {})}
    if freeze_image_encoder or freeze_text_encoder:
        model.freeze(image=freeze_image_encoder, text=freeze_text_encoder)
    return model
