"""Fine-tune a (vision-language) segmentation model on manifest datasets.

    python train.py                                   # embedded default: synthetic data, tiny CLIPSeg, CPU
    python train.py --model clipseg --data kvasir --prompt p3
    python train.py --model cris --data kvasir,clinicdb,bkai --prompt random --preset arxiv
    python train.py --resume runs/kvasir/clipseg/p3/20261123-101500

A run folder <output-dir>/<data>/<model>/<prompt>/<timestamp>/ holds args.json, metrics.jsonl,
TensorBoard events, last.pth and best.pth (written atomically) and, at the end, test results.
The steps (start or resume, fit, finish) live in vlsm/training.py.
"""
from __future__ import annotations

import argparse

from util.errors import run_cli
from vlsm.cli import train_options
from vlsm.training import run_training


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser("train.py", description=__doc__, parents=[train_options()],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def main(args) -> dict:
    return run_training(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
