"""Collect every result under one or more folders into a CSV, Markdown tables in the paper's layouts and plots.

    python results.py runs/studies/smoke                 # -> runs/studies/smoke/results/
    python results.py runs --out my_tables/

Every ``summary.json`` (written by train.py's test evaluation, evaluate.py, zeroshot.py and study.py) becomes a
row of ``results.csv`` (model, training data and prompt, test data, evaluation prompt, preset, seed, freeze
setting, perturbation, n, Dice/IoU mean and std over images); ``results_mean.csv`` averages over seeds.
``tables.md`` holds Table 2 (training scheme x test set), Table 3 (out-of-distribution matrix), Dice by prompt
(Figure 2 numbers; Tables 6-7 with frozen encoders), cross-prompt, swapped-prompt, perturbation (Figure 3
numbers: relative Dice change per attribute) and text-reliance tables, each with its metric card
(aggregation, threshold, resolution, empty-mask rule): mean ± sample std over seeds; * = a single seed, ± = std
over images.  PNG plots: dice_by_prompt_*.png, ood_heatmap_*.png, perturbation.png.  Files in --out are
replaced (they are derived from the summaries).
"""
from __future__ import annotations

import argparse
import os

from util.errors import run_cli
from vlsm.results import write_report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("results.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="folders (searched recursively for summary.json) or summary files")
    p.add_argument("--out", default=None, help="output folder (default: <first folder>/results)")
    p.add_argument("--title", default="Results", help="heading of tables.md")
    p.add_argument("--no-plots", action="store_true", help="tables and CSV only")
    return p


def main(args) -> dict:
    out = args.out or os.path.join(args.runs[0] if os.path.isdir(args.runs[0]) else
                                   os.path.dirname(os.path.abspath(args.runs[0])), "results")
    written = write_report(args.runs, out, title=args.title, plots=not args.no_plots)
    print(open(written["markdown"]).read())
    print(f"wrote {written['csv']}, {written['mean_csv']}, {written['markdown']}"
          + "".join(f", {p}" for p in written["plots"]))
    return written


if __name__ == "__main__":
    run_cli(main, get_args_parser())
