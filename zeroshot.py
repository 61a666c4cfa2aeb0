"""Zero-shot evaluation: score a pretrained model (no fine-tuning) on a dataset, for one or several prompts.

    python zeroshot.py --model clipseg --data kvasir --prompts p0,p1,p2,p3,p4,p5,p6,p7,p8,p9
    python zeroshot.py --model cris --weights /path/to/cris_checkpoint.pth --data busi --prompts p1

Weights default to the model's pretrained ones (CIDAS/clipseg-rd64-refined for CLIPSeg; for CRIS pass
--cris-checkpoint, since the original authors released none).  Results are written under
runs/zeroshot/<data>/<model>/<timestamp>/<data>_<split>_<prompt>/ like evaluate.py's, and a table is printed.
Metrics, thresholds and the empty-mask rule are those of evaluate.py.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import engine
import evaluate
from models import create_model, list_models
from train import DEFAULT_WEIGHTS


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("zeroshot.py", add_help=add_help, description=__doc__,
                                parents=[evaluate.get_args_parser(add_help=False)], conflict_handler="resolve",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for hidden in ("--checkpoint", "--output-dir", "--prompt"):  # evaluate.py options that make no sense here
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="clipseg", choices=list_models(), help="model name")
    p.add_argument("--weights", default="auto", help="hub id, local folder or file; auto = the model's pretrained "
                   "weights; 'none' = random init (a sanity floor)")
    p.add_argument("--size", default="base", choices=["base", "tiny"], help="architecture size when --weights none")
    p.add_argument("--cris-checkpoint", default=None, help="CRIS only: checkpoint of the original CRIS code")
    p.add_argument("--data", default="kvasir", help="dataset name(s)")
    p.add_argument("--prompts", default="p1", help="comma-separated prompt keys to score one after another")
    p.add_argument("--out-root", default=os.path.join("runs", "zeroshot"), help="results root")
    return p


def main(args) -> list[dict]:
    device = engine.pick_device(args.device)
    weights = DEFAULT_WEIGHTS[args.model] if args.weights == "auto" else args.weights
    cfg = {"cris_checkpoint": args.cris_checkpoint} if args.cris_checkpoint else {}
    model = create_model(args.model, weights=weights, size=args.size, **cfg).to(device)
    threshold = args.threshold if args.threshold is not None else model.default_threshold
    root = os.path.join(args.out_root, args.data.replace(",", "+"), args.model, time.strftime("%Y%m%d-%H%M%S"))
    results = []
    for prompt in [p.strip() for p in args.prompts.split(",") if p.strip()]:
        results.append(evaluate.evaluate_model(model, args, args.data, prompt, threshold, root, device,
                                               {"model": args.model, "weights": weights, "zeroshot": True}))
    print("\n| prompt | Dice | IoU | n |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['prompt']} | {100 * r['dice_mean']:.2f} ± {100 * r['dice_std']:.2f} | "
              f"{100 * r['iou_mean']:.2f} | {r['n']} |")
    with open(os.path.join(root, "zeroshot.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser())
