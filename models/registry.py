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
# weight_decay, encoder_lr, loss (vlsm.losses.LOSSES), bce_weight, batch_size, scheduler ("plateau" | "constant" |
# "cosine"), lr_patience, early_stop, min_delta and min_epochs (early stopping), epochs, clip_grad,
# freeze_image_encoder, freeze_text_encoder, frozen_mode ("eval" | "train": the mode of frozen encoders while the
# rest trains), input_size (None = the model's), dropout (CRIS decoder; None = the model's), biomedclip_taps
# (BiomedCLIPSeg(-D) only: "clipseg" | "code"; None elsewhere), drop_last, seed.
PAPER_PRESETS = ("midl", "medvlsm-code", "arxiv")  # the paper's (docs/presets.md's main table)
PRESET_NAMES = PAPER_PRESETS + ("vlsm-adapter",)     # + VLSM-Adapter's (MICCAI 2024; its own table)
PRESET_KEYS = ("optimizer", "lr", "encoder_lr", "weight_decay", "loss", "bce_weight", "batch_size", "scheduler",
               "lr_patience", "early_stop", "min_delta", "min_epochs", "epochs", "clip_grad", "freeze_image_encoder",
               "freeze_text_encoder", "frozen_mode", "input_size", "dropout", "biomedclip_taps", "drop_last", "seed",
               "lr_factor")
# midl's rule: the paper's value; where the paper is silent, the released code's (clipping 0.5, early-stopping
# min_delta 1e-4 and min_epochs 10, every batch kept, CRIS dropout 0.2, CNN input 256).  Not the code's, each a
# row of docs/presets.md: frozen encoders stay in eval mode (the paper says "frozen"), BiomedCLIPSeg taps the
# blocks CLIPSeg's decoder knows (the code's off-by-one is a defect, DESIGN.md), and the seed is 0 (a draw).
_COMMON = dict(encoder_lr=None, lr_patience=5, lr_factor=0.1, epochs=1000, clip_grad=0.5, min_delta=1e-4, min_epochs=10,
               freeze_image_encoder=False, freeze_text_encoder=False, frozen_mode="eval", input_size=None,
               dropout=None, biomedclip_taps=None, drop_last=False, seed=0)
CLIPSEG_MIDL = dict(_COMMON, optimizer="adamw", lr=2e-3, weight_decay=1e-3, loss="dice+bce", bce_weight=0.2,
                    batch_size=128, scheduler="plateau", early_stop=50)
CRIS_MIDL = dict(CLIPSEG_MIDL, lr=2e-5, batch_size=32, early_stop=10, dropout=0.2)
CNN_MIDL = dict(_COMMON, optimizer="adam", lr=1e-3, weight_decay=0.0, loss="dice", bce_weight=0.0, batch_size=16,
                scheduler="constant", early_stop=20, input_size=256)
# medvlsm-code: what ran.  MONAI 1.1.0's DiceCELoss(lambda_ce=0.2) on one sigmoid channel has a cross-entropy term
# of 0 (MONAI issue 6923), so the VLSMs trained on Dice alone, smoothing 1e-5; the CNNs' TunedDiceLoss skips
# target planes without foreground; frozen modules stayed in train mode (requires_grad_(False) only); seed 42.
_CODE = dict(early_stop=20, bce_weight=0.0, frozen_mode="train", seed=42)
CLIPSEG_CODE = dict(CLIPSEG_MIDL, **_CODE, loss="dice-code", freeze_image_encoder=True, freeze_text_encoder=True)
CRIS_CODE = dict(CRIS_MIDL, **_CODE, loss="dice-code")
CNN_CODE = dict(CNN_MIDL, **_CODE, loss="dice-present")
CLIPSEG_ARXIV = dict(CLIPSEG_MIDL, optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=16, scheduler="constant")
CRIS_ARXIV = dict(CRIS_MIDL, optimizer="adam", lr=1e-5, encoder_lr=1e-6, weight_decay=0.0, loss="bce",
                  bce_weight=1.0, batch_size=16, scheduler="constant", dropout=0.2)
CNN_ARXIV = dict(CNN_MIDL)
# vlsm-adapter: VLSM-Adapter's training (naamiinepal/vlsm-adapter; ADAPTER_SOURCES): MONAI DiceCELoss(1.5, 1.0), AdamW
# lr 3e-4 (shallow adapters; its dense adapters use 1e-3, which studies/vlsm_adapter.toml sets), wd 1e-3,
# ReduceLROnPlateau x0.3 patience 5, 200 epochs at most, at least 10, clipping 0.5, seed 42.  Its batch size lives in
# datamodule configs it did not release: the family's midl value.  CNNs have no VLSM-Adapter setting: midl's.
_ADAPTER = dict(optimizer="adamw", lr=3e-4, weight_decay=1e-3, loss="dice1.5+bce", bce_weight=1.0,
                scheduler="plateau", lr_factor=0.3, lr_patience=5, epochs=200, min_epochs=10, clip_grad=0.5, seed=42)
CLIPSEG_ADAPTER = dict(CLIPSEG_MIDL, **_ADAPTER)
CRIS_ADAPTER = dict(CRIS_MIDL, **_ADAPTER, dropout=0.2)
CRIS_ADAPTER["lr"] = 1e-4  # configs/model/cris.yaml
CLIPSEG_PRESETS = {"midl": CLIPSEG_MIDL, "medvlsm-code": CLIPSEG_CODE, "arxiv": CLIPSEG_ARXIV,
                   "vlsm-adapter": CLIPSEG_ADAPTER}
CRIS_PRESETS = {"midl": CRIS_MIDL, "medvlsm-code": CRIS_CODE, "arxiv": CRIS_ARXIV, "vlsm-adapter": CRIS_ADAPTER}
CNN_PRESETS = {"midl": CNN_MIDL, "medvlsm-code": CNN_CODE, "arxiv": CNN_ARXIV, "vlsm-adapter": dict(CNN_MIDL)}
_VA = "vlsm-adapter configs/model/clipseg_shallow_adapter.yaml"
#: setting -> where vlsm-adapter's value comes from (docs/presets.md, "VLSM-Adapter's training")
ADAPTER_SOURCES = {
    "loss": f"{_VA}: monai DiceCELoss(lambda_dice=1.5, lambda_ce=1.0); here 1.5 x Dice + 1.0 x BCE on one sigmoid "
            f"channel",
    "optimizer": f"{_VA}: AdamW", "lr": f"{_VA} (3e-4; clipseg_dense_adapter.yaml: 1e-3); CRIS: "
                                        f"configs/model/cris.yaml (1e-4, dropout 0.2)",
    "weight_decay": f"{_VA}", "scheduler": f"{_VA}: ReduceLROnPlateau factor 0.3, patience 5",
    "epochs": "configs/experiment/clipseg_*_adapter_*.yaml: trainer.max_epochs 200, min_epochs 10",
    "clip_grad": "configs/experiment/clipseg_*_adapter_*.yaml: gradient_clip_val 0.5 (precision 16-mixed: ours "
                 "follows --amp on CUDA)",
    "seed": "configs/experiment/clipseg_*_adapter_*.yaml: seed 42",
    "batch_size": "not in the released model/experiment configs: the family's midl value (128 CLIPSeg, 32 CRIS)",
}


def adapter_table() -> str:
    """docs/presets.md's table of the vlsm-adapter preset: setting, CLIPSeg family, CRIS, source."""
    rows = ["| setting | CLIPSeg family | CRIS | source |", "|---|---|---|---|"]
    for key, src in ADAPTER_SOURCES.items():
        clip, cris = CLIPSEG_ADAPTER.get(key), CRIS_ADAPTER.get(key)
        rows.append(f"| {key} | {clip} | {cris} | {src} |")
    return "\n".join(rows) + "\n"
VLSM_PRESETS = CLIPSEG_PRESETS  # the CLIPSeg family: clipseg, biomedclipseg, biomedclipseg_d
# BiomedCLIPSeg(-D): the CLIPSeg family's presets plus which encoder blocks the decoder taps (models.biomedclipseg)
BIOMEDCLIPSEG_PRESETS = {name: dict(p, biomedclip_taps="code" if name == "medvlsm-code" else "clipseg")
                         for name, p in CLIPSEG_PRESETS.items()}

_M, _X = "MIDL 2024", "arXiv"
_SILENT = "not stated: the code's, "  # midl's rule where the paper is silent (and arxiv's, derived from midl)
_DICE_CE = ("{}: monai 1.1.0 (requirements.txt) DiceCELoss(lambda_ce=0.2) on one sigmoid channel, whose "
            "cross-entropy term is 0 (MONAI issue 6923): Dice alone, smoothing 1e-5")
#: (family, setting) -> {preset: source}; families "CLIPSeg family", "BiomedCLIPSeg(-D)", "CRIS", "CNNs", "all
#: models" (docs/presets.md).  Sources in the medvlsm repository are its file paths.
PRESET_SOURCES = {
    ("CLIPSeg family", "optimizer"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/clipseg.yaml",
                                      "arxiv": f"{_X} Sec. 3.4"},
    ("CLIPSeg family", "lr"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py (the yaml's "
                               "2e-4 is overridden)", "arxiv": f"{_X} Sec. 3.4"},
    ("CLIPSeg family", "weight_decay"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/clipseg.yaml",
                                         "arxiv": f"{_X} Sec. 3.4 (no weight decay)"},
    ("CLIPSeg family", "loss"): {"midl": f"{_M} Sec. 2.4 (the paper and the code disagree: the paper's)",
                                 "medvlsm-code": _DICE_CE.format("configs/model/clipseg.yaml"),
                                 "arxiv": f"{_X} Sec. 3.4"},
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
    ("CLIPSeg family", "clip_grad"): {"midl": _SILENT + "configs/experiment/*.yaml (gradient_clip_val 0.5)",
                                      "medvlsm-code": "configs/experiment/*.yaml (gradient_clip_val 0.5)",
                                      "arxiv": _SILENT + "configs/experiment/*.yaml"},
    ("CLIPSeg family", "frozen encoders"): {
        "midl": f"{_M} Table 2 / Fig. 2 fine-tune end to end (frozen: Appendix F.1; the paper and the code disagree: "
                "the paper's)",
        "medvlsm-code": "transformers CLIPSegForImageSegmentation.forward runs CLIP under torch.no_grad; "
                        "configs/model/biomed_clipseg.yaml freeze_encoder: true",
        "arxiv": f"{_X} Sec. 3.4 (end to end; frozen: Appendix F.1)"},
    ("BiomedCLIPSeg(-D)", "biomedclip_taps"): {
        "midl": "not stated; the code's off-by-one is a defect (DESIGN.md): blocks 4/7/10 of 12, those CLIPSeg's "
                "decoder was trained on",
        "medvlsm-code": "src/models/biomedclipseg.py (hidden_states[i + 1] of a block list without the embedding, "
                        "i in 3/6/9: blocks 5/8/11)",
        "arxiv": "as midl"},
    ("CRIS", "optimizer"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                            "arxiv": f"{_X} Sec. 3.4 ('the same optimizer')"},
    ("CRIS", "lr"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py",
                     "arxiv": f"{_X} Sec. 3.4 (1e-6 encoders, 1e-5 decoder)"},
    ("CRIS", "weight_decay"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                               "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "loss"): {"midl": f"{_M} Sec. 2.4 (the paper and the code disagree: the paper's)",
                       "medvlsm-code": _DICE_CE.format("configs/model/cris.yaml"), "arxiv": f"{_X} Sec. 3.4 (BCE)"},
    ("CRIS", "batch_size"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "scripts/default_configs.py",
                             "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "scheduler"): {"midl": f"{_M} Sec. 2.4", "medvlsm-code": "configs/model/cris.yaml",
                            "arxiv": f"{_X} Sec. 3.4"},
    ("CRIS", "early_stop"): {"midl": f"{_M} Appendix C.1", "medvlsm-code": "configs/callbacks/default.yaml",
                             "arxiv": f"{_X} Appendix C.1"},
    ("CRIS", "epochs"): {"midl": "configs/experiment/cris.yaml (max_epochs)",
                         "medvlsm-code": "configs/experiment/cris.yaml", "arxiv": "configs/experiment/cris.yaml"},
    ("CRIS", "clip_grad"): {"midl": _SILENT + "configs/experiment/cris.yaml", "medvlsm-code":
                            "configs/experiment/cris.yaml", "arxiv": _SILENT + "configs/experiment/cris.yaml"},
    ("CRIS", "dropout"): {"midl": _SILENT + "configs/model/cris.yaml", "medvlsm-code": "configs/model/cris.yaml",
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
    ("CNNs", "loss"): {"midl": f"{_M} Appendix C.3 (Dice loss; which one is not stated: plain soft Dice)",
                       "medvlsm-code": "configs/model/unet.yaml: src/losses/tuned_dice_loss.py (TunedDiceLoss: "
                                       "skips target planes without foreground, smoothing 1e-5)",
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
    ("CNNs", "clip_grad"): {"midl": _SILENT + "configs/experiment/unet.yaml", "medvlsm-code":
                            "configs/experiment/unet.yaml", "arxiv": _SILENT + "configs/experiment/unet.yaml"},
    ("CNNs", "input_size"): {"midl": _SILENT + "configs/experiment/unet.yaml (img_size 256)",
                             "medvlsm-code": "configs/experiment/unet.yaml (img_size 256)",
                             "arxiv": _SILENT + "configs/experiment/unet.yaml"},
    ("all models", "min_delta"): {"midl": _SILENT + "configs/callbacks/default.yaml (early_stopping.min_delta)",
                                  "medvlsm-code": "configs/callbacks/default.yaml (early_stopping.min_delta)",
                                  "arxiv": _SILENT + "configs/callbacks/default.yaml"},
    ("all models", "min_epochs"): {"midl": _SILENT + "configs/experiment/*.yaml (trainer.min_epochs)",
                                   "medvlsm-code": "configs/experiment/*.yaml (trainer.min_epochs)",
                                   "arxiv": _SILENT + "configs/experiment/*.yaml"},
    ("all models", "drop_last"): {"midl": _SILENT + "src/datamodules/base_data_module.py (DataLoader without "
                                          "drop_last)",
                                  "medvlsm-code": "src/datamodules/base_data_module.py (DataLoader without drop_last)",
                                  "arxiv": _SILENT + "src/datamodules/base_data_module.py"},
    ("all models", "frozen_mode"): {
        "midl": f"{_M} Appendix F.1 'frozen CLIP' (the paper and the code disagree: the paper's): no gradients, "
                "BatchNorm statistics and dropout frozen too",
        "medvlsm-code": "src/models/cris_model/segmenter.py, src/models/biomedclipseg.py: requires_grad_(False) "
                        "only; Lightning keeps the module in train mode (BatchNorm statistics update, dropout on)",
        "arxiv": "as midl"},
    ("all models", "seed"): {"midl": "not stated; a seed is a draw, not a setting: this project's default 0",
                             "medvlsm-code": "configs/experiment/*.yaml (seed: 42, src/train.py seed_everything)",
                             "arxiv": "as midl"},
}
PRESET_FAMILIES = {"CLIPSeg family": ("clipseg",), "BiomedCLIPSeg(-D)": ("biomedclipseg",), "CRIS": ("cris",),
                   "CNNs": ("unet",), "all models": ("clipseg",)}
#: how a loss of vlsm.losses.LOSSES reads in the table
LOSS_LABELS = {"dice1.5+bce": "1.5 Dice + {:g} BCE",
               "dice+bce": "Dice + {:g} BCE", "dice": "Dice", "bce": "BCE", "dice-code": "Dice (smoothing 1e-5)",
               "dice-present": "Dice over target planes with foreground (smoothing 1e-5)"}
TAP_LABELS = {"clipseg": "blocks 4/7/10", "code": "blocks 5/8/11"}


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
            return LOSS_LABELS[preset["loss"]].format(preset["bce_weight"])
        if setting == "scheduler" and preset["scheduler"] == "plateau":
            return f"plateau x{preset['lr_factor']:g}, patience {preset['lr_patience']}"
        if setting == "optimizer":
            return {"adamw": "AdamW", "adam": "Adam"}[preset["optimizer"]]
        if setting == "biomedclip_taps":
            return TAP_LABELS[preset["biomedclip_taps"]]
        if setting == "drop_last":
            return "drop the last incomplete batch" if preset["drop_last"] else "keep every batch"
        if setting == "frozen_mode":
            return f"frozen encoders in {preset['frozen_mode']} mode"
        v = preset.get(setting)
        return "the model's" if v is None else "off" if setting == "clip_grad" and not v else num(v)
    lines = ["| models | setting | " + " | ".join(PAPER_PRESETS) + " |", "|---" * (2 + len(PAPER_PRESETS)) + "|"]
    for (family, setting), sources in PRESET_SOURCES.items():
        model = PRESET_FAMILIES[family][0]
        cells = [f"**{value(get_preset(model, p), setting)}**: {sources[p]}" for p in PAPER_PRESETS]
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
        presets=BIOMEDCLIPSEG_PRESETS, fetch=f"hf download {BIOMEDCLIP_HUB_ID} --local-dir biomedclip"),
    "biomedclipseg_d": ModelSpec(
        "models.biomedclipseg:build_biomedclipseg_d", f"hf-hub:{BIOMEDCLIP_HUB_ID}",
        f"{BIOMEDCLIP_HUB_ID} encoders + the decoder of {CLIPSEG_HUB_ID}", 224, CLIP_MEAN, CLIP_STD,
        presets=BIOMEDCLIPSEG_PRESETS,  # the CLIPSeg decoder is read from the Hugging Face cache (no --local-dir)
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
    # where the weights came from (a parameter-efficient run rebuilds its base from this)
    model.weight_args = {"weights": weights, **{k: v for k, v in cfg.items() if k in WEIGHT_OPTIONS}}
    if freeze_image_encoder or freeze_text_encoder:
        model.freeze(image=freeze_image_encoder, text=freeze_text_encoder)
    return model


def base_identity(model, seed: int) -> dict:
    """What a parameter-efficient run needs to rebuild its frozen base: the weights it was created from (a hub
    id, folder or file; ``None`` = random init from ``seed``) and their sha256 (util.checkpoint)."""
    from util.checkpoint import state_dict_sha256
    return {**getattr(model, "weight_args", {"weights": None}), "seed": seed, "sha256": state_dict_sha256(model)}


def rebuild_base(name: str, build_args: dict, base: dict):
    """The base model of a parameter-efficient checkpoint, checked against the sha256 it was trained on."""
    from util.checkpoint import state_dict_sha256
    from util.runtime import seed_everything
    if base.get("weights") is None:
        seed_everything(base["seed"])  # a random-initialised base (tests, the demo): the same seed, the same init
    kw = {**build_args, **{k: v for k, v in base.items() if k in WEIGHT_OPTIONS or k == "weights"}}
    model = create_model(name, **kw)
    got = state_dict_sha256(model)
    if got != base["sha256"]:
        src = base.get("weights") or f"random init (seed {base['seed']})"
        raise ValueError(f"the base weights of this PEFT run ({src}) now have sha256 {got[:12]}..., not "
                         f"{base['sha256'][:12]}... as in training: the file or hub revision changed. Point to the "
                         f"weights the run was trained on (the same --weights), or retrain")
    return model


def load_model_state(model, ckpt: dict):
    """Load a train.py checkpoint's weights into ``model``: the full state dict, or, for a parameter-efficient
    run, the method's tensors on top of its base (``model`` must have the method applied)."""
    if ckpt.get("peft"):
        from .peft import load_peft_state
        return load_peft_state(model, ckpt["model"])
    model.load_state_dict(ckpt["model"])
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
    if ckpt.get("peft"):  # the base it was trained on, the method, the method's tensors
        from .peft import apply_peft
        model = rebuild_base(ckpt["model_name"], ckpt.get("build_args", {}), ckpt["peft_base"])
        apply_peft(model, **ckpt["peft"])
        model.peft_base = ckpt["peft_base"]
    else:
        model = create_model(ckpt["model_name"], **ckpt.get("build_args", {}))
    load_model_state(model, ckpt)
    return model.to(device), ckpt


def _model_from_run_card(run_dir: str, device="cpu"):
    import json
    import os
    cfg_path = os.path.join(run_dir, "config.json")
    with_peft = os.path.isfile(os.path.join(run_dir, "peft.safetensors"))
    weights = os.path.join(run_dir, "peft.safetensors" if with_peft else "model.safetensors")
    if not (os.path.isfile(cfg_path) and os.path.isfile(weights)):
        raise FileNotFoundError(f"run folder {run_dir} has no best.pth/last.pth and no config.json + "
                                f"model.safetensors (or peft.safetensors)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    build_args = dict(cfg["build_args"])
    tok = build_args.get("tokenizer_path")
    if tok and not os.path.isabs(tok):
        build_args["tokenizer_path"] = os.path.join(run_dir, tok)
    if with_peft:  # the base it was trained on, then the method and its tensors
        from safetensors.torch import load_file

        from .peft import apply_peft, load_peft_state
        model = rebuild_base(cfg["model_name"], build_args, cfg["peft_base"])
        apply_peft(model, **cfg["peft"])
        model.peft_base = cfg["peft_base"]
        load_peft_state(model, load_file(weights))
    else:
        model = create_model(cfg["model_name"], **build_args)
        from safetensors.torch import load_model
        load_model(model, weights)
    args = {}
    if os.path.isfile(os.path.join(run_dir, "args.json")):
        with open(os.path.join(run_dir, "args.json")) as f:
            args = json.load(f)
    return model.to(device), {"model_name": cfg["model_name"], "build_args": build_args,
                              "threshold": cfg["threshold"], "args": args}
