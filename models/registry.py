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

from util.checkpoint import load_checkpoint

from .base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, SegModel

# Presets: where each training setting comes from (docs/presets.md is the table of PRESET_SOURCES).
#   midl          the MIDL 2024 paper (Sec. 2.4, Appendix C.1, C.3); where it is silent, the released code
#   medvlsm-code  what the released code (github.com/naamiinepal/medvlsm, configs/ and scripts/) did
#   arxiv         the extended arXiv version (Sec. 3.4, Appendix C.1, C.2)
# Keys (train.py options that default to None and are filled by vlsm.training.resolve_args): optimizer, lr,
# weight_decay, encoder_lr, loss ("dice+bce" | "dice" | "bce"), bce_weight, batch_size, scheduler ("plateau" |
# "constant"), lr_patience, early_stop, epochs, clip_grad, freeze_image_encoder, freeze_text_encoder,
# input_size (None = the model's), dropout (CRIS decoder; None = the model's).
PRESET_NAMES = ("midl", "medvlsm-code", "arxiv")
PRESET_KEYS = ("optimizer", "lr", "encoder_lr", "weight_decay", "loss", "bce_weight", "batch_size", "scheduler",
               "lr_patience", "early_stop", "epochs", "clip_grad", "freeze_image_encoder", "freeze_text_encoder",
               "input_size", "dropout")
_COMMON = dict(encoder_lr=None, lr_patience=5, epochs=1000, clip_grad=0.0, freeze_image_encoder=False,
               freeze_text_encoder=False, input_size=None, dropout=None)
CLIPSEG_MIDL = dict(_COMMON, optimizer="adamw", lr=2e-3, weight_decay=1e-3, loss="dice+bce", bce_weight=0.2,
                    batch_size=128, scheduler="plateau", early_stop=50)
CRIS_MIDL = dict(CLIPSEG_MIDL, lr=2e-5, batch_size=32, early_stop=10)
CNN_MIDL = dict(_COMMON, optimizer="adam", lr=1e-3, weight_decay=0.0, loss="dice", bce_weight=0.0, batch_size=16,
                scheduler="constant", early_stop=20)
_CODE = dict(clip_grad=0.5, early_stop=20)
CLIPSEG_CODE = dict(CLIPSEG_MIDL, **_CODE, freeze_image_encoder=True, freeze_text_encoder=True)
CRIS_CODE = dict(CRIS_MIDL, **_CODE, dropout=0.2)
CNN_CODE = dict(CNN_MIDL, **_CODE, input_size=256)
CLIPSEG_ARXIV = dict(CLIPSEG_MIDL, optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=16, scheduler="constant")
CRIS_ARXIV = dict(CRIS_MIDL, optimizer="adam", lr=1e-5, encoder_lr=1e-6, weight_decay=0.0, loss="bce",
                  bce_weight=1.0, batch_size=16, scheduler="constant", dropout=0.2)
CNN_ARXIV = dict(CNN_MIDL)
CLIPSEG_PRESETS = {"midl": CLIPSEG_MIDL, "medvlsm-code": CLIPSEG_CODE, "arxiv": CLIPSEG_ARXIV}
CRIS_PRESETS = {"midl": CRIS_MIDL, "medvlsm-code": CRIS_CODE, "arxiv": CRIS_ARXIV}
CNN_PRESETS = {"midl": CNN_MIDL, "medvlsm-code": CNN_CODE, "arxiv": CNN_ARXIV}
VLSM_PRESETS = CLIPSEG_PRESETS  # the CLIPSeg family: clipseg, biomedclipseg, biomedclipseg_d

_M, _X = "MIDL 2024", "arXiv"
#: (family, setting) -> {preset: source}; families "CLIPSeg family", "CRIS", "CNNs" (docs/presets.md).
PRESET_SOURCES = {
    ("CLIPSeg family", "optimizer"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/clipseg.yaml",
                                      "arxiv": f"{_X} Sec. 3.4"},
    ("CLIPSeg family", "lr"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py (the yaml's "
                               "2e-4 is overridden)", "arxiv": f"{_X} Sec. 3.4"},
    ("CLIPSeg family", "weight_decay"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/clipseg.yaml",
                                         "arxiv": f"{_X} Sec. 3.4 (no weight decay)"},
    ("CLIPSeg family", "loss"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/clipseg.yaml (monai "
                                 "DiceCELoss, lambda_ce 0.2)", "arxiv": f"{_X} Sec. 3.4"},
    ("CLIPSeg family", "batch_size"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py",
                                       "arxiv": f"{_X} Sec. 3.4"},
    ("CLIPSeg family", "scheduler"): {"midl": f"{_M} Sec. 2.4 (x0.1 after 5 epochs without lower val loss)",
                                      "medvlsm-code": "configs/model/clipseg.yaml (ReduceLROnPlateau on val/loss)",
                                      "arxiv": f"{_X} Sec. 3.4 (constant learning rate)"},
    ("CLIPSeg family", "early_stop"): {"midl": f"{_M} Appendix C.1", "medvlsm-code": "configs/callbacks/default.yaml"
                                       " (val/dice_epoch, patience 20)", "arxiv": f"{_X} Appendix C.1"},
    ("CLIPSeg family", "epochs"): {"midl": "configs/experiment/clipseg.yaml (max_epochs; the paper gives none)",
                                   "medvlsm-code": "configs/experiment/clipseg.yaml (max_epochs)",
                                   "arxiv": "configs/experiment/clipseg.yaml (max_epochs; the paper gives none)"},
    ("CLIPSeg family", "clip_grad"): {"midl": "not stated", "medvlsm-code": "configs/experiment/*.yaml "
                                      "(gradient_clip_val 0.5)", "arxiv": "not stated"},
    ("CLIPSeg family", "frozen encoders"): {
        "midl": f"{_M} Table 2 / Fig. 2 fine-tune end to end (frozen: Appendix F.1)",
        "medvlsm-code": "transformers CLIPSegForImageSegmentation.forward runs CLIP under torch.no_grad; "
                        "configs/model/biomed_clipseg.yaml freeze_encoder: true",
        "arxiv": f"{_X} Sec. 3.4 (end to end; frozen: Appendix F.1)"},
    ("CRIS", "optimizer"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                            "arxiv": f"{_X} Sec. 3.4 ('the same optimizer')"},
    ("CRIS", "lr"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py",
                     "arxiv": f"{_X} Sec. 3.4 (1e-6 encoders, 1e-5 decoder)"},
    ("CRIS", "weight_decay"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                               "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "loss"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                       "arxiv": f"{_X} Sec. 3.4 (BCE)"},
    ("CRIS", "batch_size"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py",
                             "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "scheduler"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                            "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "early_stop"): {"midl": f"{_M} Appendix C.1", "medvlsm-code": "configs/callbacks/default.yaml",
                             "arxiv": f"{_X} Appendix C.1"},
    ("CRIS", "epochs"): {"midl": "configs/experiment/cris.yaml (max_epochs)",
                         "medvlsm-code": "configs/experiment/cris.yaml", "arxiv": "configs/experiment/cris.yaml"},
    ("CRIS", "clip_grad"): {"midl": "not stated", "medvlsm-code": "configs/experiment/cris.yaml",
                            "arxiv": "not stated"},
    ("CRIS", "dropout"): {"midl": "not stated: the model's", "medvlsm-code": "configs/model/cris.yaml",
                          "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "frozen encoders"): {"midl": f"{_M} (end to end; frozen: Appendix F.1)",
                                  "medvlsm-code": "configs/experiment/cris.yaml freeze_encoder: false",
                                  "arxiv": f"{_X} (end to end)"},
    ("CNNs", "optimizer"): {"midl": f"{_M} Appendix C.3", "medvlsm-code": "configs/model/unet.yaml",
                            "arxiv": f"{_X} Appendix C.2"},
    ("CNNs", "lr"): {"midl": f"{_M} Appendix C.3", "medvlsm-code": "configs/model/unet.yaml",
                     "arxiv": f"{_X} Appendix C.2"},
    ("CNNs", "weight_decay"): {"midl": f"{_M} Appendix C.3", "medvlsm-code": "configs/model/unet.yaml (Adam default)",
                               "arxiv": f"{_X} Appendix C.2"},
    ("CNNs", "loss"): {"midl": f"{_M} Appendix C.3", "medvlsm-code": "configs/model/unet.yaml (TunedDiceLoss)",
                       "arxiv": f"{_X} Appendix C.2"},
    ("CNNs", "batch_size"): {"midl": "not stated: configs/datamodule/img_mask/*.yaml",
                             "medvlsm-code": "configs/datamodule/img_mask/*.yaml",
                             "arxiv": "not stated: configs/datamodule/img_mask/*.yaml"},
    ("CNNs", "scheduler"): {"midl": f"{_M} Appendix C.3 gives one learning rate; configs/model/unet.yaml has no "
                            "scheduler", "medvlsm-code": "configs/model/unet.yaml (none)",
                            "arxiv": f"{_X} Appendix C.2; configs/model/unet.yaml"},
    ("CNNs", "early_stop"): {"midl": "not stated: configs/callbacks/default.yaml",
                             "medvlsm-code": "configs/callbacks/default.yaml",
                             "arxiv": "not stated: configs/callbacks/default.yaml"},
    ("CNNs", "epochs"): {"midl": "configs/experiment/unet.yaml", "medvlsm-code": "configs/experiment/unet.yaml",
                         "arxiv": "configs/experiment/unet.yaml"},
    ("CNNs", "clip_grad"): {"midl": "not stated", "medvlsm-code": "configs/experiment/unet.yaml",
                            "arxiv": "not stated"},
    ("CNNs", "input_size"): {"midl": "the model record (352)", "medvlsm-code": "configs/experiment/unet.yaml "
                             "(img_size 256)", "arxiv": "the model record (352)"},
}
PRESET_FAMILIES = {"CLIPSeg family": ("clipseg",), "CRIS": ("cris",), "CNNs": ("unet",)}


def preset_table() -> str:
    """docs/presets.md's table: setting, value per preset (and where it comes from)."""
    def num(v) -> str:
        if isinstance(v, float) and 0 < abs(v) < 0.01:
            mant, exp = f"{v:.0e}".split("e")
            return f"{mant}e{int(exp)}"
        return f"{v:g}" if isinstance(v, float) else str(v)

    def value(preset: dict, setting: str):
        if setting == "frozen encoders":
            img, txt = preset["freeze_image_encoder"], preset["freeze_text_encoder"]
            return "image + text" if img and txt else "image" if img else "text" if txt else "none"
        if setting == "lr" and preset.get("encoder_lr") is not None:
            return f"{num(preset['lr'])} (encoders {num(preset['encoder_lr'])})"
        if setting == "loss":
            return {"dice+bce": f"Dice + {preset['bce_weight']:g} BCE", "dice": "Dice", "bce": "BCE"}[preset["loss"]]
        if setting == "scheduler" and preset["scheduler"] == "plateau":
            return f"plateau x0.1, patience {preset['lr_patience']}"
        if setting == "optimizer":
            return {"adamw": "AdamW", "adam": "Adam"}[preset["optimizer"]]
        v = preset.get(setting)
        return "the model's" if v is None else "off" if setting == "clip_grad" and not v else num(v)
    lines = ["| models | setting | " + " | ".join(PRESET_NAMES) + " |", "|---" * (2 + len(PRESET_NAMES)) + "|"]
    for (family, setting), sources in PRESET_SOURCES.items():
        model = PRESET_FAMILIES[family][0]
        cells = [f"**{value(get_preset(model, p), setting)}**: {sources[p]}" for p in PRESET_NAMES]
        lines.append(f"| {family} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
        presets=CRIS_PRESETS,
        fetch="hf download timm/resnet50_clip.openai --local-dir clip-rn50"),
    "biomedclipseg": ModelSpec(
        "models.biomedclipseg:build_biomedclipseg", f"hf-hub:{BIOMEDCLIP_HUB_ID}",
        f"Hugging Face hub repo {BIOMEDCLIP_HUB_ID} (open_clip); decoder random", 224, CLIP_MEAN, CLIP_STD,
        presets=VLSM_PRESETS, fetch=f"hf download {BIOMEDCLIP_HUB_ID} --local-dir biomedclip"),
    "biomedclipseg_d": ModelSpec(
        "models.biomedclipseg:build_biomedclipseg_d", f"hf-hub:{BIOMEDCLIP_HUB_ID}",
        f"{BIOMEDCLIP_HUB_ID} encoders + the decoder of {CLIPSEG_HUB_ID}", 224, CLIP_MEAN, CLIP_STD,
        presets=VLSM_PRESETS,  # the CLIPSeg decoder is read from the Hugging Face cache (no --local-dir)
        fetch=f"hf download {BIOMEDCLIP_HUB_ID} --local-dir biomedclip && hf download {CLIPSEG_HUB_ID}"),
    "unet": ModelSpec(
        "models.smp_models:build_unet", "imagenet", "ImageNet ResNet-50 (smp-hub/resnet50.imagenet)", 352,
        IMAGENET_MEAN, IMAGENET_STD, uses_text=False, presets=CNN_PRESETS,
        fetch="hf download smp-hub/resnet50.imagenet model.safetensors --revision "
              "00cb74e366966d59cd9a35af57e618af9f88efe9 --local-dir resnet50-imagenet"),
    "unetplusplus": ModelSpec(
        "models.smp_models:build_unetplusplus", "imagenet", "ImageNet ResNet-50 (smp-hub/resnet50.imagenet)", 352,
        IMAGENET_MEAN, IMAGENET_STD, uses_text=False, presets=CNN_PRESETS,
        fetch="hf download smp-hub/resnet50.imagenet model.safetensors --revision "
              "00cb74e366966d59cd9a35af57e618af9f88efe9 --local-dir resnet50-imagenet"),
    "deeplabv3plus": ModelSpec(
        "models.smp_models:build_deeplabv3plus", "imagenet", "ImageNet ResNet-50 (smp-hub/resnet50.imagenet)",
        352, IMAGENET_MEAN, IMAGENET_STD, uses_text=False, presets=CNN_PRESETS,
        fetch="hf download smp-hub/resnet50.imagenet model.safetensors --revision "
              "00cb74e366966d59cd9a35af57e618af9f88efe9 --local-dir resnet50-imagenet"),
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
    ``load_checkpoint``.  ``path``: a .pth/.safetensors file, or a run folder (best.pth, else last.pth, else
    config.json + model.safetensors: a run folder copied to another machine).  Returns (model, checkpoint dict)."""
    import os
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in ("best.pth", "last.pth")):
        return _model_from_run_card(path, device)
    ckpt = load_checkpoint(path)
    if "model_name" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by train.py (no 'model_name'); "
                         f"for CRIS checkpoints of the original code use --cris-checkpoint")
    model = create_model(ckpt["model_name"], **ckpt.get("build_args", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def _model_from_run_card(run_dir: str, device="cpu"):
    import json
    import os
    cfg_path, weights = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "model.safetensors")
    if not (os.path.isfile(cfg_path) and os.path.isfile(weights)):
        raise FileNotFoundError(f"run folder {run_dir} has no best.pth/last.pth and no config.json + "
                                f"model.safetensors")
    with open(cfg_path) as f:
        cfg = json.load(f)
    build_args = dict(cfg["build_args"])
    tok = build_args.get("tokenizer_path")
    if tok and not os.path.isabs(tok):
        build_args["tokenizer_path"] = os.path.join(run_dir, tok)
    model = create_model(cfg["model_name"], **build_args)
    from safetensors.torch import load_model
    load_model(model, weights)
    args = {}
    if os.path.isfile(os.path.join(run_dir, "args.json")):
        with open(os.path.join(run_dir, "args.json")) as f:
            args = json.load(f)
    return model.to(device), {"model_name": cfg["model_name"], "build_args": build_args,
                              "threshold": cfg["threshold"], "args": args}
