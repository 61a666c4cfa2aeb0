"""Evaluate a trained model: Dice and IoU per image at each image's ORIGINAL size.

    python evaluate.py --checkpoint runs/kvasir/clipseg/p3/20261123-101500 --data kvasir --split test --prompt p3
    python evaluate.py --checkpoint last                  # the last run started by train.py
    python evaluate.py --checkpoint RUN --manifest perturbed/test__size__opposite.json --data kvasir
    python evaluate.py --checkpoint RUN --swap-prompts    # prompts naming another target of the same image

Logits are upsampled bilinearly to the original (H, W), then sigmoid and threshold.
Empty-mask rule: when the ground truth is empty, Dice = IoU = 1 if the prediction is empty too, else 0;
a non-empty ground truth with an empty prediction scores 0.  Metrics are never NaN.
Results go to <run>/eval/<data>_<split>_<prompt>[...]/ (per_image.csv, summary.json, masks/), or to --out;
an existing results folder is never overwritten: a new one with a numeric suffix is made.
"""
from __future__ import annotations

import argparse
import os

from util.errors import run_cli
from util.runtime import pick_device
from vlsm import cli
from vlsm.loading import load_trained
from vlsm.scoring import score, threshold_on_val


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.data_options(prompt_help="prompt key; default: the training prompt "
                                                                      "('random': one fixed non-empty key per "
                                                                      "record, recorded in per_image.csv)"),
                                         cli.runtime_options(16),
                                         cli.output_options("write results to this new folder instead of "
                                                            "<run>/eval/... (must not exist)"),
                                         cli.trained_run_options(output_dir=False)])
    g = p.add_argument_group("evaluation")
    g.add_argument("--all-prompts", action="store_true", help="for list-valued prompts, score every text "
                   "(default: the first one)")
    g.add_argument("--swap-prompts", action="store_true", help="control: give each record the prompt of another "
                   "target in the same image; a model that reads its prompt should score much lower")
    g.add_argument("--save-masks", action="store_true", help="write predicted masks as PNG at original size")
    g.add_argument("--tag", default="", help="suffix for the results folder name")
    return p


def main(args) -> dict:
    device = pick_device(args.device)
    run = load_trained(args.checkpoint, args.output_dir, device, args.threshold)
    model, ckpt_path, targs, threshold = run.model, run.path, run.args, run.threshold
    data = args.data or targs.get("data")
    prompt = args.prompt or targs.get("prompt", "p1")  # "random": one fixed non-empty key per record
    target = args.target or targs.get("target")        # a --target model is scored on its own class
    drop_duplicates = args.drop_duplicates or bool(targs.get("drop_duplicates"))
    extra = {"checkpoint": ckpt_path}
    if threshold == "auto":
        threshold, extra["threshold_sweep"] = threshold_on_val(model, data, prompt, device, data_root=args.data_root,
                                                               prompts_root=args.prompts_root, target=target,
                                                               drop_duplicates=drop_duplicates)
        print(f"--threshold auto: {threshold} (best validation Dice {extra['threshold_sweep'][str(threshold)]:.4f})")
    return score(model, data, args.split, prompt, threshold, device, eval_root=os.path.join(run.run_dir, "eval"),
                 out=args.out, data_root=args.data_root, prompts_root=args.prompts_root, manifest=args.manifest,
                 all_prompts=args.all_prompts, swap_prompts=args.swap_prompts, batch_size=args.batch_size,
                 workers=args.workers, on_bad_sample=args.on_bad_sample, save_masks=args.save_masks, tag=args.tag,
                 extra=extra, drop_duplicates=drop_duplicates, target=target)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
