"""Export a CRIS trained with train.py to the original CRIS checkpoint format (keys prefixed ``module.``).

``python -m models.cris RUN_OR_PTH OUT.pth``; the original code's ``test.py`` loads OUT.pth."""
from __future__ import annotations

import argparse
import os

from util.errors import run_cli

from ..registry import model_from_checkpoint
from .checkpoint import save_cris_checkpoint
from .model import CRIS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m models.cris", description=__doc__.splitlines()[0].replace("``", "'"))
    p.add_argument("checkpoint", help="run folder (best.pth, else last.pth) or .pth written by train.py --model cris")
    p.add_argument("out", help="output .pth in the original CRIS format (must not exist)")
    return p


def main(args) -> str:
    if os.path.exists(args.out):
        raise FileExistsError(f"{args.out} exists; refusing to overwrite it")
    model, ckpt = model_from_checkpoint(args.checkpoint)
    if not isinstance(model, CRIS):
        raise ValueError(f"{args.checkpoint} holds a '{ckpt.get('model_name')}' model, not CRIS")
    path = save_cris_checkpoint(model, args.out, epoch=int(ckpt.get("epoch", 0)),
                                best_iou=float(ckpt.get("best_dice", 0.0)))
    print(f"wrote {path} (original CRIS format, keys prefixed 'module.')")
    return path


if __name__ == "__main__":
    run_cli(main, get_args_parser())
