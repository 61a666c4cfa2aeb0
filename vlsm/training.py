"""A training run from start to finish, in named steps: ``start`` or ``resume``, ``fit``, ``finish``.

``run_training(args)`` is what ``train.py`` and the study runner call; ``args`` is a namespace of
:func:`vlsm.cli.train_options` (``default_args(**overrides)`` builds one without a command line).
A run folder ``<output-dir>/<data>/<model>/<prompt>/<timestamp>/`` holds args.json, metrics.jsonl,
TensorBoard events, last.pth / best.pth (atomic; last.pth always at an epoch boundary, so a resume is exact),
interrupted.pth after Ctrl-C, final.json and the test results under eval/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, SequentialSampler

import engine
from datasets import build_dataset, collate
from datasets.cache import enable_cache, loader_workers
from models import create_model, get_preset, get_spec, model_from_checkpoint, resolve_weights
from models.peft import apply_peft, peft_state_dict
from models.registry import PRESET_KEYS, base_identity, load_model_state
from util import distributed
from util.checkpoint import Checkpointer, load_checkpoint, new_dir, rng_state, set_rng_state, write_last_run
from util.io import write_atomic, write_json_atomic
from util.metrics import upsample_logits
from util.runtime import amp_dtype, forward_batch, pick_device, seed_everything

from . import cli
from .feature_cache import FeatureCache, check_usable
from .losses import SegLoss
from .optim import build_optimizer, build_scheduler
from .run_card import dataset_manifests, write_run_card
from .scoring import pick_threshold, score

# The embedded default (tiny model on synthetic data) trains with these unless given on the command line.
DEMO_DEFAULTS = dict(epochs=6, batch_size=32, lr=1e-3)
# Options that may change on --resume; any other would make the continued run a different experiment.
RESUMABLE = ("epochs", "time_limit", "device", "workers", "no_cache", "cache_dir", "compile")


def default_args(**overrides) -> argparse.Namespace:
    """train.py's options with their defaults, then ``overrides`` (keys as attribute names)."""
    args = cli.train_options().parse_args([])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill 'auto' and preset-driven defaults so args.json records exactly what ran.

    Every setting of the preset (``models.registry.PRESET_KEYS``) left at None is taken from the model's
    ``--preset`` record (the synthetic demo keeps its own epochs, batch size and lr); explicit values win.
    ``args.preset_settings`` holds the resolved values, ``args.preset_overridden`` the keys given explicitly
    (or by the demo) that differ from the preset."""
    if args.size == "auto":
        args.size = "tiny" if args.data == "synthetic" else "base"
    args.weights = resolve_weights(args.model, args.weights, args.size) or "none"
    if args.prompt is None:  # a tiny model from scratch does not learn shape words alone in a few epochs
        args.prompt = "p3" if args.data == "synthetic" else "p1"
    preset = get_preset(args.model, args.preset)
    demo = args.data == "synthetic" and args.size == "tiny"
    for key in PRESET_KEYS:
        if getattr(args, key, None) is None:
            value = DEMO_DEFAULTS.get(key) if demo and key in DEMO_DEFAULTS else preset.get(key)
            setattr(args, key, value)
    args.preset_settings = {k: getattr(args, k) for k in PRESET_KEYS}
    args.preset_overridden = [k for k in PRESET_KEYS if getattr(args, k) != preset.get(k)]
    if args.biomedclip_taps is not None and not args.model.startswith("biomedclipseg"):
        raise ValueError(f"--biomedclip-taps is for biomedclipseg and biomedclipseg_d, not {args.model}")
    if args.multiclass and get_spec(args.model).uses_text:
        raise ValueError(f"--multiclass is for the text-free models (unet, unetplusplus, deeplabv3plus); {args.model} "
                         f"reads the prompt, which names the target of each record")
    return args


def describe_start(args, counts: dict) -> str:
    """What a run starts with: the preset, its resolved values (explicit ones marked *), the parameter counts;
    and, for base CRIS without --cris-checkpoint, that only its CLIP backbone is pretrained."""
    marked = ", ".join(f"{k}={args.preset_settings[k]}{'*' if k in args.preset_overridden else ''}"
                       for k in PRESET_KEYS)
    lines = [f"preset {args.preset} (docs/presets.md; * = given explicitly): {marked}",
             f"trainable parameters: {counts['trainable']:,} of {counts['total']:,}"]
    if args.model == "cris" and args.size == "base" and not args.cris_checkpoint:
        lines.append(CRIS_BACKBONE_ONLY)
    return "\n".join(lines)


#: Printed by a base CRIS run without --cris-checkpoint (the paper started from RefCOCO-trained CRIS, footnote 1).
CRIS_BACKBONE_ONLY = (
    "note: CRIS starts from the CLIP RN50 backbone only; its neck, decoder and projector are random. The paper "
    "fine-tuned the RefCOCO-trained CRIS weights (its footnote 1): supply them with --cris-checkpoint "
    "/path/to/cris_best.pth (a checkpoint of the original CRIS code, DerrickWang005/CRIS.pytorch; docs/cris.md)")


def multiclass_classes(args) -> tuple:
    """The output classes of a --multiclass model: the targets of the training records (datasets.targets)."""
    from datasets.manifest import load_manifest
    from datasets.registry import parse_names
    from datasets.targets import filter_target, targets_of
    records = []
    for name in parse_names(args.data, args.data_root):
        recs = load_manifest(os.path.join(args.prompts_root, name, "train.json"), args.drop_duplicates)
        records += filter_target(recs, args.target) if args.target else recs
    classes = targets_of(records)
    if not classes:
        raise ValueError(f"--multiclass: the training records of '{args.data}' name no class (no class_name, and "
                         f"mask names that are not the paper's CAMUS/CheXlocalize ones); nothing to predict per class")
    return tuple(classes)


class PerTargetLoss(SegLoss):
    """The loss of every class channel as its own binary mask (a --multiclass model's training output
    (B, C, h, w) against (B, C, H, W) masks): Dice per (image, class), averaged, plus BCE."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict:
        return super().forward(logits.flatten(0, 1)[:, None], target.flatten(0, 1)[:, None])


def build_model(args):
    cfg = {}
    if args.input_size:
        cfg["input_size"] = args.input_size
    if args.cris_checkpoint:
        cfg["cris_checkpoint"] = args.cris_checkpoint
    if args.model == "cris" and args.dropout is not None:
        cfg["dropout"] = args.dropout
    if args.model.startswith("biomedclipseg") and getattr(args, "biomedclip_taps", None):
        cfg["taps"] = args.biomedclip_taps
    if args.multiclass:
        cfg["class_names"] = list(multiclass_classes(args))
    # --peft freezes everything but its own tensors (and the decoder with --train-decoder): the freeze flags of
    # the preset do not apply
    model = create_model(args.model, weights=args.weights, size=args.size,
                         freeze_image_encoder=args.freeze_image_encoder and not args.peft,
                         freeze_text_encoder=args.freeze_text_encoder and not args.peft, **cfg)
    model = model.set_frozen_mode(getattr(args, "frozen_mode", None) or "eval")
    if args.peft:  # the base's identity first, then the method (models.peft; docs/peft.md)
        model.peft_base = base_identity(model, args.seed)
        apply_peft(model, args.peft, **cli.peft_options(args))
    return model


def drop_last(args, n: int, batch: int) -> bool:
    """Whether an epoch leaves out its last incomplete batch of ``batch`` (global) images out of ``n``: with
    ``--drop-last``; without it (the presets: every image every epoch, as the released code) only a last batch
    of one image, on which BatchNorm cannot train.  A split no larger than one batch is never cut."""
    if n <= batch:
        return False
    if getattr(args, "drop_last", None) is None:  # a run saved before the option existed: as it ran then
        return True
    return bool(args.drop_last) or n % batch == 1


def make_loaders(args, model, device):
    kw = dict(model=model, prompt=args.prompt, data_root=args.data_root, prompts_root=args.prompts_root,
              on_bad_sample=args.on_bad_sample, drop_duplicates=args.drop_duplicates,
              target=args.target)
    with distributed.rank_zero_first():  # under torchrun rank 0 builds the data cache (and synthetic data) first
        train_ds = build_dataset(args.data, "train", train=True, augment=args.augment,
                                 per_image=args.multiclass, train_fraction=args.train_fraction,
                                 fraction_seed=args.fraction_seed, **kw)
        val_ds = build_dataset(args.data, "val", return_original=True, **kw)
        if not args.no_cache:  # images and masks decoded and resized once (datasets/cache.py)
            cache_dir = args.cache_dir or os.path.join(args.data_root, ".cache")
            enable_cache(train_ds, cache_dir)
            enable_cache(val_ds, cache_dir)
    def common(ds):  # cached, un-augmented data is read in this process: workers would only copy it
        w = loader_workers(ds, args.workers)
        return dict(num_workers=w, collate_fn=collate, pin_memory=device.type == "cuda", persistent_workers=w > 0)
    g = torch.Generator().manual_seed(args.seed)
    if distributed.enabled():  # the single process's order, each process taking its slice of every global batch
        world = distributed.world_size()
        train_sampler = distributed.ShardSampler(RandomSampler(train_ds, generator=g), args.batch_size,
                                                 drop_last=drop_last(args, len(train_ds), args.batch_size * world))
        train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=train_sampler, generator=g,
                                  **common(train_ds))
        val_loader = DataLoader(val_ds, batch_size=args.batch_size,
                                sampler=distributed.ShardSampler(SequentialSampler(val_ds)), **common(val_ds))
        return train_loader, val_loader
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True,
                              drop_last=drop_last(args, len(train_ds), args.batch_size), generator=g,
                              **common(train_ds))
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False, **common(val_ds))
    return train_loader, val_loader


class StopRequested:
    """SIGINT/SIGTERM: stop at the next step boundary instead of dying mid-write; last.pth stays intact."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.stop:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop = True
        print(f"\nsignal {signum}: stopping after this step; last.pth keeps the last finished epoch", flush=True)

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)

    def check(self, _step=None):
        if self.stop:
            raise KeyboardInterrupt


@dataclass
class Run:
    """Everything a run holds while it trains."""
    args: argparse.Namespace
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    loss_fn: SegLoss
    train_loader: DataLoader
    val_loader: DataLoader
    threshold: float
    amp: bool
    run_dir: str = ""
    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    stop_best: float = -1.0  # early stopping's reference: the last val Dice better than its own by > min_delta
    stop_epoch: int = -1
    global_step: int = 0
    skipped: list = field(default_factory=list)
    nonfinite: int = 0
    finished_epochs: int = 0
    net: object = None       # what trains: the model, or the decoder fed from cached features; DDP / compiled
    features: object = None  # vlsm.feature_cache.FeatureCache with --cache-features

    @property
    def eval_net(self):
        """What validation runs: the decoder from cached features, or the model itself."""
        return self.features.decoder if self.features is not None else self.model

    @property
    def checkpointer(self) -> Checkpointer:
        return Checkpointer(self.run_dir)

    def state(self, epoch: int) -> dict:
        """The checkpoint after ``epoch`` finished epochs."""
        peft = getattr(self.model, "peft", None)  # a PEFT run keeps only the method's tensors
        return {"model": peft_state_dict(self.model) if peft else self.model.state_dict(),
                "peft": peft, "peft_base": getattr(self.model, "peft_base", None),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "epoch": epoch,
                "best_dice": self.best, "best_epoch": self.best_epoch, "global_step": self.global_step,
                "stop_best": self.stop_best, "stop_epoch": self.stop_epoch,
                "model_name": self.args.model, "build_args": self.model.build_args, "args": vars(self.args),
                "rng": rng_state(), "loader_rng": self.train_loader.generator.get_state(),
                "threshold": self.threshold}


def _setup(args) -> Run:
    """Model, data, optimiser for resolved ``args`` (shared by start and resume)."""
    device = distributed.init(args.device) or pick_device(args.device)
    seed_everything(args.seed)
    amp = device.type == "cuda" and args.amp != "off"
    model = build_model(args).to(device)
    if args.cache_features:
        check_usable(model, args.augment)
    if device.type == "cuda" and not getattr(model, "uses_text", True):  # the CNNs: channels_last convolutions
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    counts = model.parameter_counts()
    print(f"model {args.model} ({args.size}, weights={args.weights}): {counts['total']:,} parameters, "
          f"{counts['trainable']:,} trainable; input {model.input_size}px; device {device}"
          f"{' + AMP ' + str(amp_dtype(device)).replace('torch.', '') if amp else ''}"
          f"{f' x {distributed.world_size()} processes' if distributed.enabled() else ''}", flush=True)
    args.parameters = counts
    if args.preset_settings:
        print(describe_start(args, counts), flush=True)
    threshold = args.threshold if args.threshold not in (None, "auto") else model.default_threshold
    train_loader, val_loader = make_loaders(args, model, device)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.weight_decay, args.encoder_lr)
    scheduler = build_scheduler(optimizer, args.scheduler or "plateau", args.lr_patience or 5, args.epochs,
                                args.lr_factor or 0.1)
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None  # bf16 needs none
    loss_cls = PerTargetLoss if args.multiclass else SegLoss
    run = Run(args, device, model, optimizer, scheduler, scaler, loss_cls(args.loss, args.bce_weight),
              train_loader, val_loader, threshold, amp)
    _speed_setup(run)
    return run


def _speed_setup(run: Run) -> None:
    """--cache-features (encoders once), DistributedDataParallel under torchrun, --compile on CUDA."""
    a, net = run.args, run.model
    if a.cache_features:
        t0 = time.time()
        run.features = FeatureCache(run.model, run.device, run.amp, batch_size=a.batch_size)
        n = run.features.add_dataset(run.train_loader.dataset) + run.features.add_dataset(run.val_loader.dataset)
        print(f"feature cache: encoded {n} images and {len(run.features.text_slot)} prompts once "
              f"({run.features.nbytes() / 2**20:.0f} MB on {run.features.store_device}, {time.time() - t0:.1f} s); "
              f"the decoder trains from them", flush=True)
        net = run.features.decoder
    net = distributed.wrap_model(net, run.device)
    if a.compile:
        if run.device.type == "cuda":
            net = torch.compile(net)
        else:
            print("--compile: ignored on the CPU (no speed-up there)", flush=True)
    run.net = net


def start(args) -> Run:
    """A new run: resolve the options, build everything, create the run folder, save epoch 0."""
    args = resolve_args(args)
    run = _setup(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    default = os.path.join(args.output_dir, args.data.replace(",", "+"), args.model, args.prompt, stamp)
    if distributed.is_main():  # under torchrun only rank 0 writes
        run.run_dir = new_dir(args.out, default, "run folders")
        write_json_atomic(os.path.join(run.run_dir, "args.json"), vars(args), indent=2)
        write_last_run(args.output_dir, run.run_dir)
        run.checkpointer.save(run.state(0))  # last.pth always holds an epoch boundary, so every resume is exact
    run.run_dir = distributed.broadcast_object(run.run_dir)
    return run


def _check_resume_options(args, saved: dict) -> None:
    """Options given with --resume must be RESUMABLE, the default, or what the run already used."""
    defaults = vars(cli.train_options().parse_args([]))
    changed = [k for k, v in vars(args).items() if k in defaults and k not in RESUMABLE + ("resume",)
               and v != defaults[k] and v != saved.get(k)]
    if changed:
        opts = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ValueError(f"--resume continues a run with the options it started with; {opts} cannot change "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may). "
                         f"Start a new run to train with other settings")


def resume(args) -> Run:
    """Continue a run folder exactly from its last finished epoch (only RESUMABLE options may change)."""
    run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
    if os.path.exists(os.path.join(run_dir, "final.json")):
        raise ValueError(f"run {run_dir} already finished (final.json exists); start a new run instead")
    if not os.path.exists(os.path.join(run_dir, "args.json")):
        raise FileNotFoundError(f"--resume {args.resume}: {run_dir} is not a run folder (no args.json)")
    with open(os.path.join(run_dir, "args.json")) as f:
        saved = json.load(f)
    _check_resume_options(args, saved)
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pth") if os.path.isdir(args.resume) else args.resume)
    changes = {k: getattr(args, k) for k in RESUMABLE if getattr(args, k) is not None}
    # the defaults once (a run saved before an option existed gets its default), then the run's, then changes
    defaults = vars(cli.train_options().parse_args([]))
    run = _setup(argparse.Namespace(**{**defaults, **saved, **changes, "resume": args.resume}))
    run.run_dir = run_dir
    load_model_state(run.model, ckpt)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch = ckpt["epoch"]
    run.best, run.best_epoch = ckpt["best_dice"], ckpt["best_epoch"]
    run.stop_best, run.stop_epoch = ckpt.get("stop_best", run.best), ckpt.get("stop_epoch", run.best_epoch)
    run.global_step = ckpt.get("global_step", 0)
    set_rng_state(ckpt["rng"])
    if "loader_rng" in ckpt:  # the next epoch's shuffle is the one an uninterrupted run would draw
        run.train_loader.generator.set_state(ckpt["loader_rng"])
    if distributed.is_main():
        _truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), run.start_epoch)
    print(f"resumed {run_dir} at epoch {run.start_epoch} (best val Dice {run.best:.4f} at epoch {run.best_epoch})")
    return run


def _epoch(run: Run, epoch: int, writer, vis_batch, stop) -> bool:
    """Train and validate one epoch, log, checkpoint; return whether val Dice improved."""
    a = run.args
    train_loader, val_loader = run.train_loader, run.val_loader
    if run.features is not None:  # batches carry the cached encoder outputs
        train_loader, val_loader = run.features.wrap(train_loader), run.features.wrap(val_loader)
    tr = engine.train_one_epoch(run.net, train_loader, run.optimizer, run.loss_fn, run.device, epoch,
                                run.scaler, run.amp, a.clip_grad, a.max_bad_steps, writer, run.global_step,
                                max_steps=a.max_steps_per_epoch, on_step=stop.check)
    tr = distributed.reduce_train(tr)
    run.global_step = tr["global_step"]
    va = engine.evaluate(run.eval_net, val_loader, run.device, run.threshold, run.amp, loss_fn=run.loss_fn,
                         desc=f"val {epoch}")
    va = distributed.reduce_eval(va)
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(va.get("loss", -va["dice"]))
    else:  # constant, cosine: once per epoch
        run.scheduler.step()
    run.skipped += tr["skipped"] + va["skipped"]
    run.nonfinite += tr["nonfinite_steps"]
    improved = va["dice"] > run.best
    if improved:
        run.best, run.best_epoch = va["dice"], epoch
    if va["dice"] > run.stop_best + (a.min_delta or 0.0):  # early stopping counts only gains above min_delta
        run.stop_best, run.stop_epoch = va["dice"], epoch
    row = {"epoch": epoch, "train_loss": tr.get("loss"), "val_loss": va.get("loss"), "val_dice": va["dice"],
           "val_iou": va["iou"], "lr": tr["lr"], "nonfinite_steps": tr["nonfinite_steps"],
           "seconds": round(tr["seconds"], 1), "best_val_dice": run.best}
    if distributed.is_main():  # under torchrun only rank 0 logs and saves
        with open(os.path.join(run.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        for k in ("train_loss", "val_loss", "val_dice", "val_iou", "lr"):
            if row[k] is not None:
                writer.add_scalar(k.replace("_", "/", 1), row[k], epoch)
        _log_images(writer, run.model, vis_batch, run.device, epoch)
        run.checkpointer.save(run.state(epoch + 1), best=improved)
    run.finished_epochs += 1
    print(f"epoch {epoch}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
          f"val Dice {va['dice']:.4f}  IoU {va['iou']:.4f}  lr {tr['lr']:.2e}  "
          f"({tr['seconds']:.0f}s){'  *best' if improved else ''}", flush=True)
    return improved


def fit(run: Run) -> str:
    """The epochs, until the epoch cap, early stopping or the time limit; returns what stopped it."""
    from torch.utils.tensorboard import SummaryWriter
    a = run.args
    print(f"run folder: {run.run_dir}", flush=True)
    writer = SummaryWriter(run.run_dir) if distributed.is_main() else None
    vis_batch = next(iter(run.val_loader))  # the same few validation images every epoch in TensorBoard
    t_start, epoch = time.time(), run.start_epoch
    try:
        with StopRequested() as stop:
            for epoch in range(run.start_epoch, a.epochs):
                _epoch(run, epoch, writer, vis_batch, stop)
                if a.early_stop and epoch + 1 >= (a.min_epochs or 0) and epoch - run.stop_epoch >= a.early_stop:
                    return (f"early stopping (no val Dice better by more than {a.min_delta or 0:g} for "
                            f"{a.early_stop} epochs)")
                if a.time_limit and distributed.broadcast_object((time.time() - t_start) / 60 > a.time_limit):
                    return f"time limit ({a.time_limit} min)"
        return "epochs"
    except KeyboardInterrupt:
        # last.pth holds the end of the previous epoch (or the start): a resume repeats the half-done epoch and
        # gives what an uninterrupted run gives; the half-done epoch's weights go to interrupted.pth
        if not distributed.is_main():
            sys.exit(130)
        path = run.checkpointer.save_interrupted(run.state(epoch), epoch)
        writer.close()
        print(f"interrupted in epoch {epoch}: saved the current weights to {path} (evaluate.py --checkpoint FILE "
              f"takes it); last.pth holds the state after {epoch} finished epoch(s); continue with  "
              f"python train.py --resume {run.run_dir}", flush=True)
        sys.exit(130)
    except engine.NonFiniteLossError as e:
        raise engine.NonFiniteLossError(f"stopped: {e}. The last good checkpoint is {run.run_dir}/last.pth") from None
    finally:
        if writer is not None:
            writer.close()


def finish(run: Run, stopped_by: str, minutes: float) -> dict:
    """Report, score the best checkpoint on the test split, write final.json."""
    a = run.args
    if distributed.enabled():  # rank 0 finishes alone, with the whole validation set
        if not distributed.is_main():
            return {"run_dir": run.run_dir, "best_val_dice": run.best, "best_epoch": run.best_epoch,
                    "stopped_by": stopped_by}
        run.val_loader = DataLoader(run.val_loader.dataset, batch_size=a.batch_size, shuffle=False,
                                    num_workers=a.workers, collate_fn=collate, pin_memory=run.device.type == "cuda")
    print(f"stopped by {stopped_by}; best val Dice {run.best:.4f} at epoch {run.best_epoch}; {minutes:.1f} min",
          flush=True)
    skipped = sorted(set(run.skipped))
    if skipped:
        print(f"skipped {len(skipped)} bad samples:\n  " + "\n  ".join(skipped[:50]))
    final = {"best_val_dice": run.best, "best_epoch": run.best_epoch, "stopped_by": stopped_by,
             "nonfinite_steps": run.nonfinite, "skipped_samples": skipped, "minutes": minutes}
    subsets = train_subsets(run.train_loader.dataset)
    if subsets:
        final["train_subset"] = subsets
    model, ckpt = model_from_checkpoint(run.run_dir, run.device)
    threshold = ckpt.get("threshold", run.threshold)
    if a.threshold == "auto":  # chosen on the validation split, stored with the best weights
        threshold, sweep = pick_threshold(model, run.val_loader, run.device)
        final["threshold_sweep"] = sweep
        run.checkpointer.save_best_field("threshold", threshold)
        print(f"--threshold auto: {threshold} maximises validation Dice ({sweep[str(threshold)]:.4f})")
    final["threshold"] = threshold
    if not a.no_test:
        prompt = a.prompt  # "random": one fixed non-empty key per record (per_image.csv's prompt_key)
        try:
            final["test"] = score(model, a.data, "test", prompt, threshold, run.device,
                                  eval_root=os.path.join(run.run_dir, "eval"), data_root=a.data_root,
                                  prompts_root=a.prompts_root, workers=a.workers, on_bad_sample=a.on_bad_sample,
                                  extra={"checkpoint": os.path.join(run.run_dir, "best.pth")},
                                  drop_duplicates=a.drop_duplicates,
                                  target=a.target)
        except ValueError as e:  # e.g. a dataset without a test split
            print(f"no test evaluation: {e}")
    manifests = dataset_manifests(run.train_loader.dataset) + dataset_manifests(run.val_loader.dataset)
    if final.get("test", {}).get("manifest"):
        manifests.append(final["test"]["manifest"])
    write_run_card(run.run_dir, model, a, threshold, [m for m in manifests if os.path.isfile(m)], final)
    write_json_atomic(os.path.join(run.run_dir, "final.json"), final, indent=2)
    return {"run_dir": run.run_dir, **final}


def train_subsets(ds) -> dict:
    """``{dataset: subset record}`` of a --train-fraction run ({} for the whole training split)."""
    parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
    parts = [getattr(p, "base", p) for p in parts]  # --multiclass: the manifest dataset under the image view
    return {p.name: p.subset for p in parts if getattr(p, "subset", None)}


def run_training(args) -> dict:
    """Start (or resume) a run, fit it, finish it.  A new run that fails before its first finished epoch
    leaves no run folder behind."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("models").setLevel(logging.INFO)  # e.g. which decoder tensors biomedclipseg_d copied
    run = resume(args) if args.resume else start(args)
    t0 = time.time()
    try:
        stopped_by = fit(run)
    except Exception:
        if not args.resume and run.finished_epochs == 0 and distributed.is_main():
            shutil.rmtree(run.run_dir, ignore_errors=True)
            print(f"the run failed before its first epoch finished; removed {run.run_dir}", file=sys.stderr)
        raise
    return finish(run, stopped_by, (time.time() - t0) / 60)


def _truncate_metrics(path: str, start_epoch: int) -> None:
    """On resume, drop metric rows of epochs that will be run again (killed after logging, before saving)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["epoch"] < start_epoch]
    write_atomic(path, "".join(rows))


def grid_images(batch: dict, logits: torch.Tensor, mean, std, n: int = 4) -> torch.Tensor:
    """Rows of image | ground truth | prediction for TensorBoard, (3, rows*H, 3*W) in [0,1]."""
    imgs = batch["image"][:n].cpu()
    if imgs.dtype == torch.uint8:  # the data cache's images are not normalised yet
        imgs = imgs.float() / 255.0
    else:
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        imgs = (imgs.float() * s + m).clamp(0, 1)
    gt = batch["mask"][:n].float().cpu().repeat(1, 3, 1, 1)
    pred = torch.sigmoid(upsample_logits(logits[:n].float().cpu(), imgs.shape[-2:])).repeat(1, 3, 1, 1)
    rows = [torch.cat([imgs[i], gt[i], pred[i]], dim=2) for i in range(imgs.shape[0])]
    return torch.cat(rows, dim=1)


@torch.no_grad()
def _log_images(writer, model, batch, device, epoch):
    if "image" not in batch:
        return
    model.eval()
    batch = {k: v[:4] for k, v in batch.items() if k != "skipped"}
    logits = forward_batch(model, batch, device)
    writer.add_image("val/image_gt_pred", grid_images(batch, logits, model.image_mean, model.image_std), epoch)
