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
import os
import time

from util.checkpoint import new_dir
from util.errors import run_cli
from util.io import write_json_atomic
from util.runtime import pick_device
from vlsm import cli
from vlsm.loading import load_pretrained
from vlsm.scoring import score


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("zeroshot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.data_options(data_default="kvasir",
                                                          prompt_help="one prompt key (or use --prompts)"),
                                         cli.runtime_options(16),
                                         cli.output_options("write this study's results into this new folder "
                                                            "(must not exist)"),
                                         cli.model_options(default_model="clipseg", checkpoint=False)])
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", default="p1", help="comma-separated prompt keys to score one after another")
    g.add_argument("--all-prompts", action="store_true", help="for list-valued prompts, score every text")
    return p


def main(args) -> list[dict]:
    device = pick_device(args.device)
    threshold = cli.fixed_threshold(args.threshold, "zeroshot.py")
    loaded = load_pretrained(args.model, args.weights, args.size, device, threshold,
                             cris_checkpoint=args.cris_checkpoint, allow_random_decoder=args.allow_random_decoder,
                             input_size=args.input_size)
    model, threshold = loaded.model, loaded.threshold
    default = os.path.join(args.output_dir, "zeroshot", args.data.replace(",", "+"), args.model,
                           time.strftime("%Y%m%d-%H%M%S"))
    root = new_dir(args.out, default, "zero-shot results")
    prompts = [args.prompt] if args.prompt else [p.strip() for p in args.prompts.split(",") if p.strip()]
    results = [score(model, args.data, args.split, prompt, threshold, device, eval_root=root,
                     data_root=args.data_root, prompts_root=args.prompts_root, manifest=args.manifest,
                     all_prompts=args.all_prompts, batch_size=args.batch_size, workers=args.workers,
                     on_bad_sample=args.on_bad_sample, drop_duplicates=args.drop_duplicates, target=args.target,
                     extra=loaded.describe())
               for prompt in prompts]
    print("\n| prompt | Dice | IoU | n |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['prompt']} | {100 * r['dice_mean']:.2f} ± {100 * r['dice_std']:.2f} | "
              f"{100 * r['iou_mean']:.2f} | {r['n']} |")
    write_json_atomic(os.path.join(root, "zeroshot.json"), results, indent=2)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
