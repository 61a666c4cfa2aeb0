"""``python -m models [--size base|tiny] [--models a,b]``: parameter table of the model zoo.

For every registered model: input size, total parameters and trainable parameters under
each freeze setting (none / image encoder / text encoder / both).  Models are built
without weights on the ``meta`` device (no memory, no download; falls back to CPU random
init if a builder does not support it).  A model that cannot be built (not implemented
yet, missing dependency, needs a vocabulary) gets an "n/a" row with the reason.
"""
from __future__ import annotations

import argparse
import time

import torch

from util.errors import run_cli

from .registry import MODEL_SPECS, create_model

FREEZE_SETTINGS = {"none": (False, False), "image": (True, False), "text": (False, True), "both": (True, True)}


def _build(name: str, size: str, device: str):
    with torch.device(device):  # tiny BiomedCLIPSeg uses its default tiny vocabulary
        return create_model(name, weights=None, size=size)


def count_row(name: str, size: str = "base") -> dict:
    """Build ``name`` (meta device first) and count parameters under each freeze setting."""
    t0 = time.time()
    model, device, errors = None, None, []
    for device in ("meta", "cpu"):
        try:
            model = _build(name, size, device)
            break
        except Exception as e:  # noqa: BLE001 - report and go on with the next model
            errors.append(f"{device}: {type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}")
    if model is None:
        return {"model": name, "error": errors[-1] if errors else "unknown"}
    row = {"model": name, "input": model.input_size, "total": model.parameter_counts()["total"], "device": device}
    for label, (img, txt) in FREEZE_SETTINGS.items():
        try:
            model.freeze(image=img, text=txt)
            row[label] = model.parameter_counts()["trainable"]
        except ValueError:  # nothing to freeze for this part (e.g. text in a CNN)
            row[label] = None
    model.freeze(False, False)
    row["seconds"] = time.time() - t0
    return row


def _fmt(n) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f}M"


def format_table(rows: list[dict]) -> str:
    head = ["model", "input", "total", "trainable: none", "frozen image", "frozen text", "frozen both"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["model"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"]
        else:
            cells = [r["model"], str(r["input"]), _fmt(r["total"])] + [_fmt(r[k]) for k in FREEZE_SETTINGS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['model']}: not built ({r['error']})" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + notes if notes else []))


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="base", choices=["base", "tiny"], help="architecture size (default base)")
    ap.add_argument("--models", default=",".join(MODEL_SPECS), help="comma-separated model names")
    return ap


def main(args) -> int:
    rows = [count_row(n.strip(), args.size) for n in args.models.split(",") if n.strip()]
    print(f"Parameters (M = 1e6) of the {args.size} models, built without weights; "
          f"trainable counts per freeze setting (n/a = nothing to freeze).")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
