"""Text-reliance report for a trained run: how much of its Dice comes from reading the prompt.

    python text_report.py --checkpoint last
    python text_report.py --checkpoint runs/kvasir/clipseg/p6/<stamp> --data kvasir --kinds opposite,random_word

The test images are scored with the right prompt, the empty prompt, the prompt of another target in the same
image, the prompt of another image, gibberish of the same length, and with each attribute of the prompt
perturbed (from the records' attributes).  The report gives the text gain (Dice with the right prompt minus Dice
with the empty prompt) and, for each wrong prompt, the share of the right-prompt Dice that survives (1 = the
model ignores its text).  Written to --out (default <run>/text_reliance/<timestamp>/): text_reliance.md, .csv,
.json, text_reliance.png and one results folder per condition (per_image.csv, summary.json).  Metrics as
evaluate.py: original image size, the run's threshold, empty-mask rule both empty -> 1, one empty -> 0.
"""
from __future__ import annotations

import argparse
import os
import time

from datasets.perturb import DEFAULT_ATTRIBUTES as ATTRIBUTES
from datasets.perturb import KINDS
from util.checkpoint import new_dir
from util.errors import run_cli
from util.runtime import pick_device
from vlsm import cli
from vlsm.loading import load_trained
from vlsm.text_report import format_report, text_reliance


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("text_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.runtime_options(16), cli.trained_run_options(auto_threshold=False)])
    p.add_argument("--data", default=None, help="dataset (default: the run's; pooled data: each of its datasets)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--prompt", default=None, help="prompt key (default: the training prompt; 'random' -> p1)")
    p.add_argument("--data-root", default=None, help="default: the run's")
    p.add_argument("--prompts-root", default=None, help="default: the run's")
    p.add_argument("--attributes", default=",".join(ATTRIBUTES), help="attributes to perturb (comma-separated)")
    p.add_argument("--kinds", default="opposite", help=f"perturbation kinds (comma-separated, from {', '.join(KINDS)})")
    p.add_argument("--seed", type=int, default=0, help="seed of the gibberish and the perturbations")
    p.add_argument("--out", default=None, help="output folder (must not exist)")
    return p


def main(args) -> list[dict]:
    device = pick_device(args.device)
    threshold = cli.fixed_threshold(args.threshold, "text_report.py")
    run = load_trained(args.checkpoint, args.output_dir, device, threshold)
    model, ckpt, ckpt_path, run_dir, a, threshold = run.model, run.ckpt, run.path, run.run_dir, run.args, run.threshold
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown --kinds {bad}; choose from {', '.join(KINDS)}")
    out = new_dir(args.out, os.path.join(run_dir, "text_reliance", time.strftime("%Y%m%d-%H%M%S")), "reports")
    data = args.data or a.get("data", "synthetic")
    names = [n for n in data.split(",") if n]
    extra = {"model": a.get("model", ckpt.get("model_name", "")), "train_data": a.get("data", ""),
             "train_prompt": a.get("prompt", ""), "preset": a.get("preset", ""), "seed": a.get("seed", ""),
             "checkpoint": ckpt_path, "setting": "finetuned"}
    reports = []
    for name in names:
        rep = text_reliance(model, name, args.prompt or a.get("prompt", "p1"), threshold, device,
                            os.path.join(out, name) if len(names) > 1 else out,
                            data_root=args.data_root or a.get("data_root", "data"),
                            prompts_root=args.prompts_root or a.get("prompts_root", "prompts_json"), split=args.split,
                            attributes=[s.strip() for s in args.attributes.split(",") if s.strip()], kinds=kinds,
                            seed=args.seed, batch_size=args.batch_size, workers=args.workers, extra=extra)
        print(format_report(rep))
        reports.append(rep)
    print(f"wrote the text-reliance report to {out}")
    return reports


if __name__ == "__main__":
    run_cli(main, get_args_parser())
