"""Fine-tune a (vision-language) segmentation model on manifest datasets.

    python train.py                                   # embedded default: synthetic data, tiny CLIPSeg, CPU
    python train.py --model clipseg --data kvasir --prompt p3
    python train.py --model cris --data kvasir,clinicdb,bkai --prompt random --preset arxiv
    python train.py --resume runs/kvasir/clipseg/p3/20261123-101500

A run folder runs/<data>/<model>/<prompt>/<timestamp>/ holds args.json, metrics.jsonl,
TensorBoard events, last.pth and best.pth (written atomically) and, at the end, test results.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader

import engine
from datasets import build_dataset, collate
from models import create_model, get_preset, list_models

DEFAULT_WEIGHTS = {"clipseg": "CIDAS/clipseg-rd64-refined", "cris": "openai",
                   "biomedclipseg": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                   "biomedclipseg_d": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                   "unet": "imagenet", "unetplusplus": "imagenet", "deeplabv3plus": "imagenet"}
# The embedded default (tiny model on synthetic data) trains with these unless given on the command line.
DEMO_DEFAULTS = dict(epochs=6, batch_size=32, lr=1e-3)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("train.py", add_help=add_help, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", help="dataset name, or several joined by commas to pool "
                   "(kvasir, clinicdb, bkai, isic, dfu, camus, busi, chexlocalize, synthetic; default: synthetic)")
    g.add_argument("--prompt", default=None, help="prompt key p0..p9, any key in the manifests, or 'random' "
                   "(a random key per sample per step); default p1 (class name), p3 (colour + shape) on synthetic")
    g.add_argument("--data-root", default="data", help="folder holding <name>/images and <name>/masks")
    g.add_argument("--prompts-root", default="prompts_json", help="folder holding <name>/{train,val,test}.json")
    g.add_argument("--augment", action="store_true", help="light brightness/contrast augmentation (keeps prompts true)")
    g.add_argument("--on-bad-sample", choices=["error", "skip"], default="error",
                   help="unreadable/invalid samples: stop with a clear message (default) or skip and report them")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="clipseg", choices=list_models(), help="model name (default clipseg)")
    g.add_argument("--size", default="auto", choices=["auto", "base", "tiny"],
                   help="architecture size: base = the paper's, tiny = small random config; "
                        "auto = tiny on synthetic data, base otherwise")
    g.add_argument("--weights", default="auto", help="'none' (random init), a hub id, local folder or file; "
                   "auto = none for tiny, the model's pretrained weights for base (e.g. CIDAS/clipseg-rd64-refined)")
    g.add_argument("--cris-checkpoint", default=None, help="CRIS only: a checkpoint saved by the original CRIS code")
    g.add_argument("--input-size", type=int, default=None, help="override the model's input size")
    g.add_argument("--freeze-image-encoder", action="store_true", help="freeze the image encoder (no gradients, eval mode): the paper's frozen-encoder ablation")
    g.add_argument("--freeze-text-encoder", action="store_true", help="freeze the text encoder")
    g = p.add_argument_group("optimisation (defaults come from --preset)")
    g.add_argument("--preset", default="midl", choices=["midl", "arxiv"],
                   help="paper settings: midl (AdamW wd 1e-3, lr 2e-3 CLIPSeg / 2e-5 CRIS, Dice+0.2 BCE, "
                        "batch 128/32) or arxiv (Adam lr 1e-3, batch 16); CNNs: Adam lr 1e-3, Dice loss")
    g.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 100; 6 for the synthetic demo)")
    g.add_argument("--batch-size", type=int, default=None, help="batch size (preset: 128 CLIPSeg, 32 CRIS, 16 arxiv/CNN; 32 for the demo)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (preset: 2e-3 CLIPSeg family, 2e-5 CRIS, 1e-3 CNN/arxiv; 1e-3 for the demo)")
    g.add_argument("--encoder-lr", type=float, default=None, help="separate learning rate for the encoders")
    g.add_argument("--weight-decay", type=float, default=None, help="weight decay (preset: 1e-3 midl, 0 arxiv/CNN)")
    g.add_argument("--optimizer", choices=["adamw", "adam"], default=None, help="optimizer (preset)")
    g.add_argument("--loss", choices=["dice+bce", "dice", "bce"], default=None, help="loss (preset: dice+bce for VLSMs, dice for CNNs)")
    g.add_argument("--bce-weight", type=float, default=None, help="weight of BCE in dice+bce (preset 0.2)")
    g.add_argument("--lr-patience", type=int, default=5, help="ReduceLROnPlateau (x0.1) patience on val loss")
    g.add_argument("--early-stop", type=int, default=10, help="stop after this many epochs without better val Dice "
                   "(0 = never)")
    g.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0 = off)")
    g.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="mixed precision (CUDA only)")
    g.add_argument("--threshold", type=float, default=None, help="probability threshold for metrics "
                   "(default: the model's, 0.5; CRIS 0.35)")
    g.add_argument("--max-bad-steps", type=int, default=20, help="stop after this many non-finite losses in a row")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests)")
    g.add_argument("--time-limit", type=float, default=None, help="stop (cleanly, after an epoch) after this many minutes")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="runs", help="runs/<data>/<model>/<prompt>/<timestamp>/ is created here")
    g.add_argument("--run-dir", default=None, help="exact run folder to create (must not exist)")
    g.add_argument("--resume", default=None, help="run folder (or its last.pth) to continue")
    g.add_argument("--seed", type=int, default=0, help="random seed (python, numpy, torch, shuffling)")
    g.add_argument("--device", default="auto", help="cuda, cpu or auto")
    g.add_argument("--no-test", action="store_true", help="skip the test-split evaluation at the end")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill 'auto' and preset-driven defaults so args.json records exactly what ran."""
    if args.size == "auto":
        args.size = "tiny" if args.data == "synthetic" else "base"
    if args.weights == "auto":
        args.weights = "none" if args.size == "tiny" else DEFAULT_WEIGHTS[args.model]
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
    args.preset_threshold = preset.get("threshold")
    return args


def make_run_dir(args) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    default = os.path.join(args.output_dir, args.data.replace(",", "+"), args.model, args.prompt, stamp)
    return engine.new_dir(args.run_dir, default, FileExistsError(
        f"run folder {args.run_dir} exists; choose another --run-dir or use --resume {args.run_dir}"))


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
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=len(train_ds) > args.batch_size,
                              generator=g, **common)
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


def main(args) -> dict:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("models").setLevel(logging.INFO)  # e.g. which decoder tensors biomedclipseg_d copied
    device = engine.pick_device(args.device)
    resume_ckpt = None
    if args.resume:
        run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
        if os.path.exists(os.path.join(run_dir, "final.json")):
            raise SystemExit(f"run {run_dir} already finished (final.json exists); start a new run instead")
        with open(os.path.join(run_dir, "args.json")) as f:
            saved = json.load(f)
        resume_path = os.path.join(run_dir, "last.pth") if os.path.isdir(args.resume) else args.resume
        args = argparse.Namespace(**{**saved, "resume": args.resume, "device": args.device, "workers": args.workers})
        resume_ckpt = engine.load_checkpoint(resume_path)
    else:
        args = resolve_args(args)
    engine.seed_everything(args.seed)
    amp = device.type == "cuda" and args.amp != "off"

    model = build_model(args).to(device)
    counts = model.parameter_counts()
    print(f"model {args.model} ({args.size}, weights={args.weights}): {counts['total']:,} parameters, "
          f"{counts['trainable']:,} trainable; input {model.input_size}px; device {device}"
          f"{' + AMP' if amp else ''}", flush=True)
    threshold = args.threshold if args.threshold is not None else (args.preset_threshold or model.default_threshold)

    train_loader, val_loader = make_loaders(args, model, device)
    optimizer = engine.build_optimizer(model, args.optimizer, args.lr, args.weight_decay, args.encoder_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=args.lr_patience)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    loss_fn = engine.SegLoss(args.loss, args.bce_weight)

    start_epoch, best, best_epoch, global_step, skipped_total, bad_total = 0, -1.0, -1, 0, [], 0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        start_epoch = resume_ckpt["epoch"]
        best, best_epoch = resume_ckpt["best_dice"], resume_ckpt["best_epoch"]
        global_step = resume_ckpt.get("global_step", 0)
        engine.set_rng_state(resume_ckpt["rng"])
        if "loader_rng" in resume_ckpt:  # the next epoch's shuffle is the one an uninterrupted run would draw
            train_loader.generator.set_state(resume_ckpt["loader_rng"])
        _truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), start_epoch)
        print(f"resumed {run_dir} at epoch {start_epoch} (best val Dice {best:.4f} at epoch {best_epoch})")
    else:
        run_dir = make_run_dir(args)
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "last_run.txt"), "w") as f:
            f.write(run_dir + "\n")
    print(f"run folder: {run_dir}", flush=True)

    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(run_dir)

    def checkpoint(epoch: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                "best_dice": best, "best_epoch": best_epoch, "global_step": global_step,
                "model_name": args.model, "build_args": model.build_args, "args": vars(args),
                "rng": engine.rng_state(), "loader_rng": train_loader.generator.get_state(),
                "threshold": threshold}

    if resume_ckpt is None:  # last.pth always holds an epoch boundary, so every resume is exact
        engine.atomic_torch_save(checkpoint(0), os.path.join(run_dir, "last.pth"))
    vis_batch = next(iter(val_loader))  # the same few validation images every epoch in TensorBoard
    t_start = time.time()
    stopped_by = "epochs"
    epoch = start_epoch
    with StopRequested() as stop:
        try:
            for epoch in range(start_epoch, args.epochs):
                tr = engine.train_one_epoch(model, train_loader, optimizer, loss_fn, device, epoch, scaler, amp,
                                            args.clip_grad, args.max_bad_steps, writer, global_step,
                                            max_steps=args.max_steps_per_epoch, on_step=stop.check)
                global_step = tr["global_step"]
                va = engine.evaluate(model, val_loader, device, threshold, amp, loss_fn=loss_fn, desc=f"val {epoch}")
                scheduler.step(va.get("loss", -va["dice"]))
                skipped_total += tr["skipped"] + va["skipped"]
                bad_total += tr["nonfinite_steps"]
                improved = va["dice"] > best
                if improved:
                    best, best_epoch = va["dice"], epoch
                row = {"epoch": epoch, "train_loss": tr["loss"] if "loss" in tr else None,
                       "val_loss": va.get("loss"), "val_dice": va["dice"], "val_iou": va["iou"], "lr": tr["lr"],
                       "nonfinite_steps": tr["nonfinite_steps"], "seconds": round(tr["seconds"], 1),
                       "best_val_dice": best}
                with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
                for k in ("train_loss", "val_loss", "val_dice", "val_iou", "lr"):
                    if row[k] is not None:
                        writer.add_scalar(k.replace("_", "/", 1), row[k], epoch)
                _log_images(writer, model, vis_batch, device, epoch)
                ck = checkpoint(epoch + 1)
                if improved:
                    engine.atomic_torch_save(ck, os.path.join(run_dir, "best.pth"))
                engine.atomic_torch_save(ck, os.path.join(run_dir, "last.pth"))
                print(f"epoch {epoch}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                      f"val Dice {va['dice']:.4f}  IoU {va['iou']:.4f}  lr {tr['lr']:.2e}  "
                      f"({tr['seconds']:.0f}s){'  *best' if improved else ''}", flush=True)
                if args.early_stop and epoch - best_epoch >= args.early_stop:
                    stopped_by = f"early stopping (no better val Dice for {args.early_stop} epochs)"
                    break
                if args.time_limit and (time.time() - t_start) / 60 > args.time_limit:
                    stopped_by = f"time limit ({args.time_limit} min)"
                    break
        except engine.NonFiniteLossError as e:
            writer.close()
            raise SystemExit(f"stopped: {e}. The last good checkpoint is {run_dir}/last.pth")
        except KeyboardInterrupt:
            # last.pth already holds the end of the previous epoch (or the start); the half-done epoch is not
            # saved over it, so a resume repeats that epoch and gives what an uninterrupted run gives
            # the weights of the half-done epoch go to interrupted.pth (weights only, never resumed from)
            ck = {k: v for k, v in checkpoint(epoch).items() if k not in ("optimizer", "scheduler", "scaler")}
            engine.atomic_torch_save({**ck, "interrupted_in_epoch": epoch}, os.path.join(run_dir, "interrupted.pth"))
            writer.close()
            print(f"interrupted in epoch {epoch}: saved the current weights to {run_dir}/interrupted.pth "
                  f"(evaluate.py --checkpoint FILE takes it); last.pth holds the state after {epoch} finished "
                  f"epoch(s); continue with  python train.py --resume {run_dir}", flush=True)
            sys.exit(130)
    writer.close()
    print(f"stopped by {stopped_by}; best val Dice {best:.4f} at epoch {best_epoch}; "
          f"{(time.time() - t_start) / 60:.1f} min", flush=True)
    if skipped_total:
        print(f"skipped {len(skipped_total)} bad samples:\n  " + "\n  ".join(sorted(set(skipped_total))[:50]))
    final = {"best_val_dice": best, "best_epoch": best_epoch, "stopped_by": stopped_by,
             "nonfinite_steps": bad_total, "skipped_samples": sorted(set(skipped_total)),
             "minutes": (time.time() - t_start) / 60}
    if not args.no_test:
        import evaluate as evaluate_script
        ev_args = evaluate_script.get_args_parser().parse_args(
            ["--checkpoint", run_dir, "--data", args.data, "--split", "test", "--prompt", args.prompt,
             "--data-root", args.data_root, "--prompts-root", args.prompts_root, "--workers", str(args.workers),
             "--on-bad-sample", args.on_bad_sample, "--device", str(device)])
        try:
            final["test"] = evaluate_script.main(ev_args)
        except ValueError as e:  # e.g. a dataset without a test split
            print(f"no test evaluation: {e}")
    with open(os.path.join(run_dir, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    return {"run_dir": run_dir, **final}


def _truncate_metrics(path: str, start_epoch: int) -> None:
    """On resume, drop metric rows of epochs that will be run again (killed after logging, before saving)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["epoch"] < start_epoch]
    with open(path, "w") as f:
        f.writelines(rows)


@torch.no_grad()
def _log_images(writer, model, batch, device, epoch):
    if "image" not in batch:
        return
    model.eval()
    batch = {k: v[:4] for k, v in batch.items()}
    logits = engine.forward_batch(model, batch, device)
    writer.add_image("val/image_gt_pred", engine.make_grid_images(batch, logits, model.image_mean, model.image_std),
                     epoch)


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser())
