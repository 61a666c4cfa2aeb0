"""One command-line vocabulary for every script, and one clear-error handler.

Parent parsers (composed by the scripts as MAE/DETR compose theirs):
- :func:`data_options`: ``--data --split --prompt --data-root --prompts-root --manifest --on-bad-sample``
- :func:`runtime_options`: ``--device --workers --batch-size``
- :func:`trained_run_options`: ``--checkpoint --output-dir --threshold`` (a trained run: evaluate.py,
  text_report.py, ``python -m vlsm.figures``)
- :func:`model_options`: a trained run *or* a model with weights (``--model --weights --size --input-size
  --cris-checkpoint --allow-random-decoder``): predict.py, zeroshot.py (through :mod:`vlsm.loading`)
- :func:`train_options`: everything ``train.py`` takes (the study runner builds its runs from it too)

Names mean the same in the scripts that train, score or predict: ``--output-dir`` is the runs root (``runs/``);
``--out`` names an exact new folder (refused if it exists); ``--checkpoint`` is a run folder, a file or
``last``; ``--threshold`` is a probability in [0, 1] or ``auto``.  (study.py's and results.py's ``--out`` is
where the study or the report goes; they say so in their help.)
"""
from __future__ import annotations

import argparse
import os

from .losses import LOSSES
from .optim import SCHEDULERS

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def threshold_arg(value: str):
    """argparse type: a probability in [0, 1] or 'auto'."""
    if value == "auto":
        return value
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] or 'auto', got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {t}")
    return t


#: The frozen-encoder settings of a fine-tuning run: name -> (freeze image encoder, freeze text encoder).
FREEZE_SETTINGS = {"none": (False, False), "image": (True, False), "text": (False, True), "both": (True, True)}


def freeze_name(freeze_image: bool, freeze_text: bool) -> str:
    """The :data:`FREEZE_SETTINGS` name of a pair of flags."""
    return {v: k for k, v in FREEZE_SETTINGS.items()}[(bool(freeze_image), bool(freeze_text))]


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def peft_methods() -> tuple:
    from models.peft import PEFT_METHODS
    return tuple(PEFT_METHODS)


#: train.py option -> the models.peft option it sets (None on the command line = the method's default)
PEFT_OPTIONS = ("adapter_in", "adapter_dim", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "n_ctx",
                "vpt_tokens", "vpt_deep", "train_decoder")


def peft_options(args) -> dict:
    """The options of ``args.peft`` that were given (the method's defaults fill the rest); an option of another
    method is refused in one line."""
    from models.peft import PEFT_METHODS
    given = {k: getattr(args, k) for k in PEFT_OPTIONS if getattr(args, k) not in (None, False)}
    if not args.peft:
        if given:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)} need --peft METHOD")
        return {}
    own = PEFT_METHODS[args.peft]
    other = [k for k in given if k not in own]
    if other:
        raise ValueError(f"--peft {args.peft} takes no {', '.join('--' + k.replace('_', '-') for k in other)} "
                         f"(its options: {', '.join('--' + k.replace('_', '-') for k in own)})")
    if isinstance(given.get("adapter_in"), str):
        given["adapter_in"] = [part.strip() for part in given["adapter_in"].split(",") if part.strip()]
    return given


def preset_names() -> tuple:
    from models.registry import PRESET_NAMES
    return PRESET_NAMES


def data_options(split: bool = True, manifest: bool = True, data_default: str | None = None,
                 prompt_help: str | None = None) -> argparse.ArgumentParser:
    from datasets.registry import dataset_names
    p = _parser()
    g = p.add_argument_group("data")
    g.add_argument("--data", default=data_default, help=f"dataset name, or several joined by commas to pool "
                   f"({', '.join(dataset_names())}); default: {data_default or 'the training data'}")
    if split:
        g.add_argument("--split", default="test", choices=["train", "val", "test"],
                       help="split to score (default test)")
    g.add_argument("--prompt", default=None, help=prompt_help or "prompt key p0..p9 (any key of the manifests)")
    g.add_argument("--data-root", default="data", help="folder holding <name>/images and <name>/masks")
    g.add_argument("--prompts-root", default="prompts_json", help="folder holding <name>/{train,val,test}.json")
    if manifest:
        g.add_argument("--manifest", default=None, help="read this manifest file instead (e.g. a perturbed one; "
                       "a single dataset)")
    g.add_argument("--on-bad-sample", choices=["error", "skip"], default="error",
                   help="unreadable/invalid samples: stop with a clear message (default) or skip and list them")
    g.add_argument("--drop-duplicates", action="store_true",
                   help="leave out records that repeat an earlier record's image and mask (default: kept, with a "
                        "warning naming both; the paper's BKAI and ISIC train manifests hold one each)")
    g.add_argument("--target", default=None, metavar="CLASS",
                   help="keep only the records of one structure or pathology of a multi-target dataset (CAMUS: "
                        "'myocardium' or 'myo', CheXlocalize: 'Edema', ...): one model per class, as the paper's CNNs")
    return p


def runtime_options(batch_size: int | None = 16, batch_help: str = "images per forward pass"
                    ) -> argparse.ArgumentParser:
    p = _parser()
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="cuda, cpu or auto")
    g.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="DataLoader worker processes")
    g.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    return p


def output_options(out_help: str) -> argparse.ArgumentParser:
    p = _parser()
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default="runs", help="runs root: run folders, last_run.txt, zeroshot results")
    g.add_argument("--out", default=None, help=out_help)
    return p


def checkpoint_option(p, required: bool = True) -> None:
    p.add_argument("--checkpoint", required=required, help="run folder (uses best.pth), a .pth/.safetensors file, "
                   "or 'last' for the run named in <output-dir>/last_run.txt")


def threshold_option(p, auto: bool = True) -> None:
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help="probability threshold (default: the run's, else the model's: 0.5, CRIS 0.35)"
                        + (", or 'auto': the best on the validation split, recorded in summary.json" if auto else ""))


def fixed_threshold(value, script: str):
    """Refuse ``--threshold auto`` where no validation split is scored (predict, zero-shot, figures)."""
    if value == "auto":
        raise ValueError(f"{script} takes a number for --threshold; 'auto' (chosen on the validation split) is "
                         f"for train.py and evaluate.py")
    return value


def trained_run_options(auto_threshold: bool = True, output_dir: bool = True) -> argparse.ArgumentParser:
    """A trained run: ``--checkpoint`` (required), ``--output-dir`` (where ``last`` is looked up), ``--threshold``."""
    p = _parser()
    g = p.add_argument_group("trained run")
    checkpoint_option(g)
    if output_dir:
        g.add_argument("--output-dir", default="runs", help="runs root (where train.py wrote last_run.txt)")
    threshold_option(g, auto_threshold)
    return p


def model_options(default_model: str | None = None, checkpoint: bool = True) -> argparse.ArgumentParser:
    """A model to score without training: a trained run (``--checkpoint``) or ``--model`` with ``--weights``
    (exactly one of them; :func:`vlsm.loading.load_for_eval`)."""
    from models import list_models
    p = _parser()
    g = p.add_argument_group("model: " + ("a trained run (--checkpoint) or " if checkpoint else "")
                             + "a model with weights (--model/--weights)")
    if checkpoint:
        checkpoint_option(g, required=False)
    g.add_argument("--model", default=default_model, choices=list_models(),
                   help="model name" + (", for use without a run folder" if checkpoint else ""))
    g.add_argument("--weights", default="auto", help="hub id, local folder or file; auto = the model's pretrained "
                   "weights (base) or random (tiny); 'none' = random init (a sanity floor)")
    g.add_argument("--size", default="base", choices=["base", "tiny"], help="architecture size")
    g.add_argument("--input-size", type=int, default=None, help="override the model's input size")
    g.add_argument("--cris-checkpoint", default=None, help="CRIS: checkpoint of the original CRIS code (the "
                   "RefCOCO-trained weights the paper used); required for CRIS unless --allow-random-decoder")
    g.add_argument("--allow-random-decoder", action="store_true",
                   help="CRIS without --cris-checkpoint: score it anyway (only the CLIP backbone is pretrained; the "
                        "neck, decoder and projector are random, so this is a floor, not the paper's zero-shot CRIS)")
    threshold_option(g, auto=False)
    return p


def train_options() -> argparse.ArgumentParser:
    """Every option of train.py (defaults None = from --preset or the model's record)."""
    from models import list_models
    p = argparse.ArgumentParser(add_help=False, parents=[
        data_options(split=False, manifest=False, data_default="synthetic",
                     prompt_help="prompt key p0..p9, any key in the manifests, or 'random' (a random non-empty key "
                                 "per sample per step); default p1 (class name), p3 (colour + shape) on synthetic"),
        runtime_options(None, "batch size (preset: 128 CLIPSeg, 32 CRIS, 16 arxiv/CNN; 32 for the demo)"),
        output_options("exact run folder to create (must not exist); default "
                       "<output-dir>/<data>/<model>/<prompt>/<timestamp>")])
    g = p.add_argument_group("augmentation")
    g.add_argument("--augment", action="store_true", help="light brightness/contrast augmentation (keeps prompts true)")
    g = p.add_argument_group("speed (docs/performance.md)")
    g.add_argument("--no-cache", action="store_true",
                   help="decode and resize every image and mask on every step instead of reading the data cache "
                        "(the cache holds them decoded at the input size, built once per dataset and size)")
    g.add_argument("--cache-dir", default=None,
                   help="where the data cache lives (default <data-root>/.cache); rebuilt when a file, the "
                        "manifest or the input size changes")
    g.add_argument("--cache-features", action="store_true",
                   help="with both encoders frozen and no --augment: compute the encoder outputs once (per image "
                        "and per distinct prompt) and train the decoder from them (CLIPSeg, BiomedCLIPSeg, CRIS)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model on CUDA (ignored on the CPU, where it does not help)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="clipseg", choices=list_models(), help="model name (default clipseg)")
    g.add_argument("--size", default="auto", choices=["auto", "base", "tiny"],
                   help="architecture size: base = the paper's, tiny = small random config; "
                        "auto = tiny on synthetic data, base otherwise")
    g.add_argument("--weights", default="auto", help="'none' (random init), a hub id, local folder or file; "
                   "auto = none for tiny, the model's pretrained weights for base (python -m models.doctor lists them)")
    g.add_argument("--cris-checkpoint", default=None, help="CRIS only: a checkpoint saved by the original CRIS code")
    g.add_argument("--input-size", type=int, default=None,
                   help="override the model's input size (preset: 256 for the CNNs, as the released code)")
    g.add_argument("--freeze-image-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze the image encoder (no gradients, eval mode): the paper's frozen-encoder ablation; "
                        "preset medvlsm-code freezes both encoders of the CLIPSeg family (decoder-only training)")
    g.add_argument("--freeze-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze the text encoder (preset)")
    g.add_argument("--dropout", type=float, default=None, help="CRIS decoder dropout (preset: 0.2)")
    g.add_argument("--frozen-mode", choices=["eval", "train"], default=None,
                   help="mode of frozen encoders while the rest trains: eval (BatchNorm statistics and dropout "
                        "frozen too; preset midl/arxiv) or train (no gradients only, as the released code: "
                        "preset medvlsm-code)")
    g.add_argument("--biomedclip-taps", choices=["clipseg", "code"], default=None,
                   help="BiomedCLIPSeg(-D): the image-encoder blocks the decoder reads: clipseg = blocks 4/7/10 "
                        "(those CLIPSeg's decoder was trained on; preset midl/arxiv) or code = 5/8/11 (the "
                        "released code's off-by-one; preset medvlsm-code)")
    g.add_argument("--multiclass", action="store_true",
                   help="text-free models (UNet, UNet++, DeepLabV3+) on multi-target data: one output channel per "
                        "class, trained on all of an image's masks at once, scored per record on its class")
    g = p.add_argument_group("optimisation (defaults come from --preset; docs/presets.md)")
    g.add_argument("--preset", default="midl", choices=list(preset_names()),
                   help="where the settings come from: midl (the MIDL 2024 paper: AdamW wd 1e-3, lr 2e-3 CLIPSeg / "
                        "2e-5 CRIS, Dice+0.2 BCE, batch 128/32, early stopping 50/10), medvlsm-code (the released "
                        "code's configs: CLIPSeg family decoder only, gradient clipping 0.5, ...) or arxiv (the "
                        "extended version: Adam, constant lr, batch 16); CNNs: Adam lr 1e-3, Dice loss")
    g.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (preset: 1000, the paper code's cap; 6 for the synthetic demo)")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (preset: 2e-3 CLIPSeg family, 2e-5 CRIS, 1e-3 CNN/arxiv; 1e-3 for the demo)")
    g.add_argument("--encoder-lr", type=float, default=None, help="separate learning rate for the encoders")
    g.add_argument("--weight-decay", type=float, default=None, help="weight decay (preset: 1e-3 midl, 0 arxiv/CNN)")
    g.add_argument("--optimizer", choices=["adamw", "adam"], default=None, help="optimizer (preset)")
    g.add_argument("--loss", choices=list(LOSSES), default=None,
                   help="loss (preset: dice+bce for VLSMs, dice for CNNs): "
                        + "; ".join(f"{k} = {v}" for k, v in LOSSES.items()))
    g.add_argument("--bce-weight", type=float, default=None, help="weight of BCE in dice+bce (preset 0.2)")
    g.add_argument("--scheduler", choices=list(SCHEDULERS), default=None,
                   help="learning-rate schedule (preset): plateau = ReduceLROnPlateau x0.1 on val loss, constant, "
                        "cosine = CosineAnnealingLR to 0 over --epochs")
    g.add_argument("--lr-factor", type=float, default=None,
                   help="ReduceLROnPlateau's factor (preset: 0.1; 0.3 in vlsm-adapter)")
    g.add_argument("--lr-patience", type=int, default=None,
                   help="ReduceLROnPlateau (x0.1) patience on val loss (preset 5)")
    g.add_argument("--early-stop", type=int, default=None,
                   help="stop after this many epochs without better val Dice, 0 = never (preset: 50 CLIPSeg "
                        "family / 10 CRIS in midl and arxiv, 20 in medvlsm-code)")
    g.add_argument("--min-delta", type=float, default=None,
                   help="early stopping: a val Dice counts as better only when it exceeds the best by more than "
                        "this (preset 1e-4, the released code's); best.pth keeps any better epoch")
    g.add_argument("--min-epochs", type=int, default=None,
                   help="early stopping never stops before this many epochs (preset 10, the released code's)")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop the last incomplete training batch of each epoch (preset: --no-drop-last, every image "
                        "every epoch, as the released code; a last batch of one image is dropped anyway, since "
                        "BatchNorm cannot train on it)")
    g.add_argument("--clip-grad", type=float, default=None,
                   help="max gradient norm, 0 = off (preset 0.5, the released code's)")
    g.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="mixed precision (CUDA only)")
    g.add_argument("--threshold", type=threshold_arg, default=None,
                   help="probability threshold for metrics (default: the model's, 0.5; CRIS 0.35), or 'auto': "
                        "chosen on the validation split after training and stored with the run")
    g.add_argument("--max-bad-steps", type=int, default=20, help="stop after this many non-finite losses in a row")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests)")
    g.add_argument("--time-limit", type=float, default=None,
                   help="stop (cleanly, after an epoch) after this many minutes")
    g = p.add_argument_group("parameter-efficient fine-tuning (docs/peft.md; defaults: each method's source)")
    g.add_argument("--peft", default=None, choices=list(peft_methods()),
                   help="train only a method's tensors, everything else frozen (the decoder too unless "
                        "--train-decoder): adapter-shallow / adapter-dense (VLSM-Adapter), lora (peft), coop "
                        "(text context vectors), vpt (visual prompt tokens); the run folder keeps only those tensors")
    g.add_argument("--adapter-in", default=None, help="adapters: a subset of vision,text,cond (default all: VLC)")
    g.add_argument("--adapter-dim", type=int, default=None, help="adapters: bottleneck width (512 shallow, 64 dense)")
    g.add_argument("--lora-rank", type=int, default=None, help="LoRA rank r")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (scale alpha / r)")
    g.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout")
    g.add_argument("--lora-targets", default=None, help="LoRA: comma-separated module names or suffixes (default: "
                   "the model's attention projections)")
    g.add_argument("--n-ctx", type=int, default=None, help="CoOp: number of learned context vectors")
    g.add_argument("--vpt-tokens", type=int, default=None, help="VPT: number of visual prompt tokens")
    g.add_argument("--vpt-deep", action=argparse.BooleanOptionalAction, default=None,
                   help="VPT: new tokens in every layer (deep) instead of the first only (shallow)")
    g.add_argument("--train-decoder", action="store_true", help="PEFT: train the decoder too")
    g = p.add_argument_group("run")
    g.add_argument("--resume", default=None, help="run folder (or its last.pth) to continue; only --epochs, "
                   "--time-limit, --device and --workers may change")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed (python, numpy, torch, shuffling); preset: 0, 42 in medvlsm-code")
    g.add_argument("--train-fraction", type=float, default=1.0,
                   help="train on this fraction in (0, 1] of each training set (data-efficiency curves): a seeded, "
                        "nested subset (10%% lies inside 25%%), validation and test untouched; recorded with its "
                        "sha256 in final.json")
    g.add_argument("--fraction-seed", type=int, default=0,
                   help="seed of the --train-fraction subset (kept apart from --seed, so seeds share one subset)")
    g.add_argument("--no-test", action="store_true", help="skip the test-split evaluation at the end")
    return p
