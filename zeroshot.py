"""Zero-shot evaluation: score a pretrained model (no fine-tuning) on a dataset, for one or several prompts.

    python zeroshot.py --model clipseg --data kvasir --prompts p0,p1,p2,p3,p4,p5,p6,p7,p8,p9
    python zeroshot.py --model cris --cris-checkpoint /path/to/cris_checkpoint.pth --data busi --prompts p1

Weights default to the model's pretrained ones (its record in models/registry.py; `python -m models.doctor`
lists them).  Results are written under <output-dir>/zeroshot/<data>/<model>/<timestamp>/<data>_<split>_<prompt>/
(or under --out) like evaluate.py's, and a table is printed.  Metrics, thresholds and the empty-mask rule are
those of evaluate.py.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from models import create_model, list_models, resolve_weights
from vlsm import cli
from vlsm.checkpoint import new_dir
from vlsm.runtime import pick_device
from vlsm.scoring import score


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("zeroshot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.data_options(data_default="kvasir",
                                                          prompt_help="one prompt key (or use --prompts)"),
                                         cli.runtime_options(16),
                                         cli.output_options("write this study's results into this new folder "
                                                            "(must not exist)")])
    g = p.add_argument_group("model")
    g.add_argument("--model", default="clipseg", choices=list_models(), help="model name")
    g.add_argument("--weights", default="auto", help="hub id, local folder or file; auto = the model's pretrained "
                   "weights; 'none' = random init (a sanity floor)")
    g.add_argument("--size", default="base", choices=["base", "tiny"], help="architecture size")
    g.add_argument("--cris-checkpoint", default=None, help="CRIS only: checkpoint of the original CRIS code (the "
                   "RefCOCO-trained weights the paper used); required for CRIS unless --allow-random-decoder")
    g.add_argument("--allow-random-decoder", action="store_true",
                   help="CRIS without --cris-checkpoint: score it anyway (only the CLIP backbone is pretrained; the "
                        "neck, decoder and projector are random, so this is a floor, not the paper's zero-shot CRIS)")
    g.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the model's)")
    g.add_argument("--prompts", default="p1", help="comma-separated prompt keys to score one after another")
    g.add_argument("--all-prompts", action="store_true", help="for list-valued prompts, score every text")
    return p


def main(args) -> list[dict]:
    if args.model == "cris" and not args.cris_checkpoint and not getattr(args, "allow_random_decoder", False):
        raise ValueError("zero-shot CRIS needs the CRIS weights: without --cris-checkpoint only its CLIP RN50 "
                         "backbone is pretrained and the neck, decoder and projector are random. Pass "
                         "--cris-checkpoint /path/to/cris_best.pth (the RefCOCO-trained checkpoint of the original "
                         "CRIS code, DerrickWang005/CRIS.pytorch, as the paper used; docs/cris.md), or "
                         "--allow-random-decoder to score the random-decoder model as a floor")
    device = pick_device(args.device)
    weights = resolve_weights(args.model, args.weights, args.size)
    cfg = {"cris_checkpoint": args.cris_checkpoint} if args.cris_checkpoint else {}
    model = create_model(args.model, weights=weights, size=args.size, **cfg).to(device)
    threshold = args.threshold if args.threshold is not None else model.default_threshold
    default = os.path.join(args.output_dir, "zeroshot", args.data.replace(",", "+"), args.model,
                           time.strftime("%Y%m%d-%H%M%S"))
    root = new_dir(args.out, default, "zero-shot results")
    prompts = [args.prompt] if args.prompt else [p.strip() for p in args.prompts.split(",") if p.strip()]
    results = [score(model, args.data, args.split, prompt, threshold, device, eval_root=root,
                     data_root=args.data_root, prompts_root=args.prompts_root, manifest=args.manifest,
                     all_prompts=args.all_prompts, batch_size=args.batch_size, workers=args.workers,
                     on_bad_sample=args.on_bad_sample, drop_duplicates=args.drop_duplicates, target=args.target,
                     extra={"model": args.model, "weights": weights, "zeroshot": True,
                            "random_decoder": args.model == "cris" and not args.cris_checkpoint})
               for prompt in prompts]
    print("\n| prompt | Dice | IoU | n |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['prompt']} | {100 * r['dice_mean']:.2f} ± {100 * r['dice_std']:.2f} | "
              f"{100 * r['iou_mean']:.2f} | {r['n']} |")
    with open(os.path.join(root, "zeroshot.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
