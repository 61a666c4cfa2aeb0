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
from torch.utils.data import DataLoader

import engine
from datasets import build_dataset, collate
from models import create_model, get_preset, model_from_checkpoint, resolve_weights

from . import cli
from .checkpoint import Checkpointer, load_checkpoint, new_dir, rng_state, set_rng_state, write_last_run
from .losses import SegLoss
from .metrics import upsample_logits
from .optim import build_optimizer, build_scheduler
from .runtime import forward_batch, pick_device, seed_everything
from .scoring import score

# The embedded default (tiny model on synthetic data) trains with these unless given on the command line.
DEMO_DEFAULTS = dict(epochs=6, batch_size=32, lr=1e-3)
# Options that may change on --resume; any other would make the continued run a different experiment.
RESUMABLE = ("epochs", "time_limit", "device", "workers")


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
    """Fill 'auto' and preset-driven defaults so args.json records exactly what ran."""
    if args.size == "auto":
        args.size = "tiny" if args.data == "synthetic" else "base"
    args.weights = resolve_weights(args.model, args.weights, args.size) or "none"
    if args.prompt is None:  # a tiny model from scratch does not learn shape words alone in a few epochs
        args.prompt = "p3" if args.data == "synthetic" else "p1"
    preset = get_preset(args.model, args.preset)
    demo = args.data == "synthetic" and args.size == "tiny"
    for key in ("batch_size", "lr", "weight_decay", "optimizer", "loss", "bce_weight", "encoder_lr"):
        if getattr(args, key) is None:
            value = DEMO_DEFAULTS.get(key) if demo and key in DEMO_DEFAULTS else preset.get(key)
            setattr(args, key, value)
    if args.epochs is None:
        args.epochs = DEMO_DEFAULTS["epochs"] if demo else 100
    args.dropout = preset.get("dropout")
    return args


def build_model(args):
    cfg = {}
    if args.input_size:
        cfg["input_size"] = args.input_size
    if args.cris_checkpoint:
        cfg["cris_checkpoint"] = args.cris_checkpoint
    if args.model == "cris" and args.dropout is not None:
        cfg["dropout"] = args.dropout
    return create_model(args.model, weights=args.weights, size=args.size,
                        freeze_image_encoder=args.freeze_image_encoder,
                        freeze_text_encoder=args.freeze_text_encoder, **cfg)


def make_loaders(args, model, device):
    kw = dict(model=model, prompt=args.prompt, data_root=args.data_root, prompts_root=args.prompts_root,
              on_bad_sample=args.on_bad_sample)
    train_ds = build_dataset(args.data, "train", train=True, augment=args.augment, **kw)
    val_ds = build_dataset(args.data, "val", return_original=True, **kw)
    common = dict(num_workers=args.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                  persistent_workers=args.workers > 0)
    g = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True,
                              drop_last=len(train_ds) > args.batch_size, generator=g, **common)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False, **common)
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
    global_step: int = 0
    skipped: list = field(default_factory=list)
    nonfinite: int = 0
    finished_epochs: int = 0

    @property
    def checkpointer(self) -> Checkpointer:
        return Checkpointer(self.run_dir)

    def state(self, epoch: int) -> dict:
        """The checkpoint after ``epoch`` finished epochs."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "epoch": epoch,
                "best_dice": self.best, "best_epoch": self.best_epoch, "global_step": self.global_step,
                "model_name": self.args.model, "build_args": self.model.build_args, "args": vars(self.args),
                "rng": rng_state(), "loader_rng": self.train_loader.generator.get_state(),
                "threshold": self.threshold}


def _setup(args) -> Run:
    """Model, data, optimiser for resolved ``args`` (shared by start and resume)."""
    device = pick_device(args.device)
    seed_everything(args.seed)
    amp = device.type == "cuda" and args.amp != "off"
    model = build_model(args).to(device)
    counts = model.parameter_counts()
    print(f"model {args.model} ({args.size}, weights={args.weights}): {counts['total']:,} parameters, "
          f"{counts['trainable']:,} trainable; input {model.input_size}px; device {device}"
          f"{' + AMP' if amp else ''}", flush=True)
    threshold = args.threshold if args.threshold is not None else model.default_threshold
    train_loader, val_loader = make_loaders(args, model, device)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.weight_decay, args.encoder_lr)
    scheduler = build_scheduler(optimizer, "plateau", args.lr_patience)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    return Run(args, device, model, optimizer, scheduler, scaler, SegLoss(args.loss, args.bce_weight),
               train_loader, val_loader, threshold, amp)


def start(args) -> Run:
    """A new run: resolve the options, build everything, create the run folder, save epoch 0."""
    args = resolve_args(args)
    run = _setup(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    default = os.path.join(args.output_dir, args.data.replace(",", "+"), args.model, args.prompt, stamp)
    run.run_dir = new_dir(args.out, default, "run folders")
    with open(os.path.join(run.run_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2)
    write_last_run(args.output_dir, run.run_dir)
    run.checkpointer.save(run.state(0))  # last.pth always holds an epoch boundary, so every resume is exact
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
    run = _setup(argparse.Namespace(**{**saved, **changes, "resume": args.resume}))
    run.run_dir = run_dir
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch = ckpt["epoch"]
    run.best, run.best_epoch = ckpt["best_dice"], ckpt["best_epoch"]
    run.global_step = ckpt.get("global_step", 0)
    set_rng_state(ckpt["rng"])
    if "loader_rng" in ckpt:  # the next epoch's shuffle is the one an uninterrupted run would draw
        run.train_loader.generator.set_state(ckpt["loader_rng"])
    _truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), run.start_epoch)
    print(f"resumed {run_dir} at epoch {run.start_epoch} (best val Dice {run.best:.4f} at epoch {run.best_epoch})")
    return run


def _epoch(run: Run, epoch: int, writer, vis_batch, stop) -> bool:
    """Train and validate one epoch, log, checkpoint; return whether val Dice improved."""
    a = run.args
    tr = engine.train_one_epoch(run.model, run.train_loader, run.optimizer, run.loss_fn, run.device, epoch,
                                run.scaler, run.amp, a.clip_grad, a.max_bad_steps, writer, run.global_step,
                                max_steps=a.max_steps_per_epoch, on_step=stop.check)
    run.global_step = tr["global_step"]
    va = engine.evaluate(run.model, run.val_loader, run.device, run.threshold, run.amp, loss_fn=run.loss_fn,
                         desc=f"val {epoch}")
    run.scheduler.step(va.get("loss", -va["dice"]))
    run.skipped += tr["skipped"] + va["skipped"]
    run.nonfinite += tr["nonfinite_steps"]
    improved = va["dice"] > run.best
    if improved:
        run.best, run.best_epoch = va["dice"], epoch
    row = {"epoch": epoch, "train_loss": tr.get("loss"), "val_loss": va.get("loss"), "val_dice": va["dice"],
           "val_iou": va["iou"], "lr": tr["lr"], "nonfinite_steps": tr["nonfinite_steps"],
           "seconds": round(tr["seconds"], 1), "best_val_dice": run.best}
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
    writer = SummaryWriter(run.run_dir)
    vis_batch = next(iter(run.val_loader))  # the same few validation images every epoch in TensorBoard
    t_start, epoch = time.time(), run.start_epoch
    try:
        with StopRequested() as stop:
            for epoch in range(run.start_epoch, a.epochs):
                _epoch(run, epoch, writer, vis_batch, stop)
                if a.early_stop and epoch - run.best_epoch >= a.early_stop:
                    return f"early stopping (no better val Dice for {a.early_stop} epochs)"
                if a.time_limit and (time.time() - t_start) / 60 > a.time_limit:
                    return f"time limit ({a.time_limit} min)"
        return "epochs"
    except KeyboardInterrupt:
        # last.pth holds the end of the previous epoch (or the start): a resume repeats the half-done epoch and
        # gives what an uninterrupted run gives; the half-done epoch's weights go to interrupted.pth
        path = run.checkpointer.save_interrupted(run.state(epoch), epoch)
        writer.close()
        print(f"interrupted in epoch {epoch}: saved the current weights to {path} (evaluate.py --checkpoint FILE "
              f"takes it); last.pth holds the state after {epoch} finished epoch(s); continue with  "
              f"python train.py --resume {run.run_dir}", flush=True)
        sys.exit(130)
    except engine.NonFiniteLossError as e:
        raise engine.NonFiniteLossError(f"stopped: {e}. The last good checkpoint is {run.run_dir}/last.pth") from None
    finally:
        writer.close()


def finish(run: Run, stopped_by: str, minutes: float) -> dict:
    """Report, score the best checkpoint on the test split, write final.json."""
    a = run.args
    print(f"stopped by {stopped_by}; best val Dice {run.best:.4f} at epoch {run.best_epoch}; {minutes:.1f} min",
          flush=True)
    skipped = sorted(set(run.skipped))
    if skipped:
        print(f"skipped {len(skipped)} bad samples:\n  " + "\n  ".join(skipped[:50]))
    final = {"best_val_dice": run.best, "best_epoch": run.best_epoch, "stopped_by": stopped_by,
             "nonfinite_steps": run.nonfinite, "skipped_samples": skipped, "minutes": minutes}
    if not a.no_test:
        model, ckpt = model_from_checkpoint(run.run_dir, run.device)
        prompt = "p1" if a.prompt == "random" else a.prompt
        try:
            final["test"] = score(model, a.data, "test", prompt, ckpt.get("threshold", run.threshold), run.device,
                                  eval_root=os.path.join(run.run_dir, "eval"), data_root=a.data_root,
                                  prompts_root=a.prompts_root, workers=a.workers, on_bad_sample=a.on_bad_sample,
                                  extra={"checkpoint": os.path.join(run.run_dir, "best.pth")})
        except ValueError as e:  # e.g. a dataset without a test split
            print(f"no test evaluation: {e}")
    with open(os.path.join(run.run_dir, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    return {"run_dir": run.run_dir, **final}


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
        if not args.resume and run.finished_epochs == 0:
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
    with open(path, "w") as f:
        f.writelines(rows)


def grid_images(batch: dict, logits: torch.Tensor, mean, std, n: int = 4) -> torch.Tensor:
    """Rows of image | ground truth | prediction for TensorBoard, (3, rows*H, 3*W) in [0,1]."""
    imgs = batch["image"][:n].float().cpu()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    imgs = (imgs * s + m).clamp(0, 1)
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
