"""Evaluate a trained model: Dice and IoU per image at each image's ORIGINAL size.

    python evaluate.py --checkpoint runs/kvasir/clipseg/p3/20261123-101500 --data kvasir --split test --prompt p3
    python evaluate.py --checkpoint last                  # the last run started by train.py
    python evaluate.py --checkpoint RUN --manifest perturbed/size_opposite.json --data kvasir
    python evaluate.py --checkpoint RUN --swap-prompts    # prompts naming another target of the same image

Logits are upsampled bilinearly to the original (H, W), then sigmoid and threshold.
Empty-mask rule: when the ground truth is empty, Dice = IoU = 1 if the prediction is empty too, else 0;
a non-empty ground truth with an empty prediction scores 0.  Metrics are never NaN.
Results go to <run>/eval/<data>_<split>_<prompt>[...]/ (per_image.csv, summary.json, masks/);
an existing results folder is never overwritten: a new one with a numeric suffix is made.
"""
from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader

import engine
from datasets import ManifestDataset, build_dataset, collate
from datasets.manifest import swap_prompts


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("evaluate.py", add_help=add_help, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder (uses best.pth), a .pth/.safetensors file, or "
                   "'last' for the run named in <output-dir>/last_run.txt")
    p.add_argument("--output-dir", default="runs", help="where train.py wrote last_run.txt (for --checkpoint last)")
    p.add_argument("--data", default=None, help="dataset name(s); default: the training data")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score (default test)")
    p.add_argument("--prompt", default=None, help="prompt key; default: the training prompt ('random' -> p1)")
    p.add_argument("--manifest", default=None, help="evaluate this manifest file instead (e.g. a perturbed one)")
    p.add_argument("--all-prompts", action="store_true", help="for list-valued prompts, score every text "
                   "(default: the first one)")
    p.add_argument("--swap-prompts", action="store_true", help="control: give each record the prompt of another "
                   "target in the same image; a model that reads its prompt should score much lower")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold (default: from training)")
    p.add_argument("--save-masks", action="store_true", help="write predicted masks as PNG at original size")
    p.add_argument("--tag", default="", help="suffix for the results folder name")
    p.add_argument("--results-dir", default=None, help="write results here instead of <run>/eval/... (must not exist)")
    p.add_argument("--data-root", default="data", help="folder holding <name>/images and <name>/masks")
    p.add_argument("--prompts-root", default="prompts_json", help="folder holding <name>/<split>.json")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader worker processes")
    p.add_argument("--on-bad-sample", choices=["error", "skip"], default="error", help="unreadable samples: stop with a clear message, or skip and list them in summary.json")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    return p


def resolve_checkpoint(path: str, output_dir: str = "runs") -> tuple[str, str]:
    """Return (checkpoint file, run folder)."""
    if path == "last":
        marker = os.path.join(output_dir, "last_run.txt")
        if not os.path.exists(marker):
            raise SystemExit(f"--checkpoint last: {marker} not found; train a model first or pass a run folder")
        path = open(marker).read().strip()
    if not os.path.exists(path):
        raise SystemExit(f"checkpoint {path} not found")
    file = engine.checkpoint_file(path)
    return file, path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def new_output_dir(explicit: str | None, default: str, what: str = "results") -> str:
    """Create ``explicit`` (refused if it exists) or a fresh ``default`` (suffixed if taken): never overwrite."""
    return engine.new_dir(explicit, default, SystemExit(f"{explicit} exists; {what} are never overwritten"))


def apply_swap(ds):
    parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
    new_parts, dropped = [], 0
    for part in parts:
        recs, d = swap_prompts(part.records)
        dropped += d
        if not recs:
            continue
        new_parts.append(ManifestDataset(recs, part.image_dir, part.mask_dir, prompt=part.prompt,
                                         transform=part.transform, all_prompts=part.all_prompts,
                                         return_original=True, on_bad_sample=part.on_bad_sample, name=part.name))
    if not new_parts:
        raise SystemExit("--swap-prompts: no image has more than one target, nothing to swap")
    if dropped:
        print(f"--swap-prompts: {dropped} records have no other target in their image and are left out")
    return new_parts[0] if len(new_parts) == 1 else ConcatDataset(new_parts)


def main(args) -> dict:
    device = engine.pick_device(args.device)
    ckpt_path, run_dir = resolve_checkpoint(args.checkpoint, args.output_dir)
    model, ckpt = engine.model_from_checkpoint(ckpt_path, device)
    targs = ckpt.get("args", {})
    data = args.data or targs.get("data")
    prompt = args.prompt or targs.get("prompt", "p1")
    if prompt == "random":
        prompt = "p1"
    threshold = args.threshold if args.threshold is not None else ckpt.get("threshold", model.default_threshold)
    return evaluate_model(model, args, data, prompt, threshold, os.path.join(run_dir, "eval"), device,
                          {"checkpoint": ckpt_path})


def _default_manifest(prompts_root: str, data: str, split: str) -> str | None:
    """The manifest file evaluated for a single dataset (None for pooled data)."""
    return None if "," in data else os.path.abspath(os.path.join(prompts_root, data, f"{split}.json"))


def evaluate_model(model, args, data: str, prompt: str, threshold: float, eval_root: str, device,
                   extra: dict | None = None) -> dict:
    """Score ``model`` on ``data``/``args.split`` with ``prompt``; write per_image.csv and summary.json."""
    ds = build_dataset(data, args.split, model=model, prompt=prompt, data_root=args.data_root,
                       prompts_root=args.prompts_root, manifest=args.manifest, all_prompts=args.all_prompts,
                       return_original=True, on_bad_sample=args.on_bad_sample)
    if args.swap_prompts:
        ds = apply_swap(ds)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers, collate_fn=collate)

    name = f"{data.replace(',', '+')}_{args.split}_{prompt}"
    if args.manifest:
        name += "_" + os.path.splitext(os.path.basename(args.manifest))[0]
    if args.swap_prompts:
        name += "_swapped"
    if args.tag:
        name += "_" + args.tag
    out_dir = new_output_dir(args.results_dir, os.path.join(eval_root, name))

    save_fn = None
    if args.save_masks:
        mask_dir = os.path.join(out_dir, "masks")
        os.makedirs(mask_dir)

        def save_fn(item, pred):
            stem = os.path.splitext(item["mask_name"])[0]
            Image.fromarray(pred.numpy().astype(np.uint8) * 255).save(os.path.join(mask_dir, f"{stem}.png"))

    res = engine.evaluate(model, loader, device, threshold, per_image=True, save_fn=save_fn,
                          amp=device.type == "cuda")
    rows = res.pop("rows")
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["dice"])
        w.writeheader()
        w.writerows(rows)
    summary = {"dice_mean": res["dice"], "dice_std": res["dice_std"], "iou_mean": res["iou"],
               "iou_std": res["iou_std"], "n": res["n"], "data": data, "split": args.split, "prompt": prompt,
               "manifest": args.manifest or _default_manifest(args.prompts_root, data, args.split),
               "swap_prompts": args.swap_prompts, "all_prompts": args.all_prompts,
               "threshold": threshold, **(extra or {}), "skipped": res["skipped"],
               "metric_resolution": "original image size", "empty_mask_rule": "both empty -> 1, one empty -> 0"}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{data} {args.split} prompt {prompt}{' (swapped)' if args.swap_prompts else ''}: "
          f"Dice {res['dice']:.4f} ± {res['dice_std']:.4f}  IoU {res['iou']:.4f} ± {res['iou_std']:.4f}  "
          f"(n={res['n']}, threshold {threshold}) -> {out_dir}")
    if res["skipped"]:
        print(f"skipped {len(res['skipped'])} bad samples (listed in summary.json)")
    return {**summary, "results_dir": out_dir}


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser())
