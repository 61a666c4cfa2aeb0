"""``python -m models [--size base|tiny] [--models a,b] [--peft METHOD [options]]``: parameter table of the zoo.

For every registered model: input size, total parameters and trainable parameters under
each freeze setting (none / image encoder / text encoder / both).  Models are built
without weights on the ``meta`` device (no memory, no download; falls back to CPU random
init if a builder does not support it).  A model that cannot be built (not implemented
yet, missing dependency, needs a vocabulary) gets an "n/a" row with the reason.

With ``--peft METHOD`` (models.peft, docs/peft.md): total and trainable parameters of each model with that
parameter-efficient method applied (its options as flags, e.g. ``--adapter-in vision --adapter-dim 256``); a
model the method does not apply to gets an "n/a" row and the reason.
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


def peft_row(name: str, size: str, method: str, options: dict) -> dict:
    """Build ``name`` (meta device first), apply ``method`` and count total and trainable parameters."""
    from .peft import apply_peft
    options = dict(options)
    if method == "coop":  # counts do not depend on the initialisation; a base tokenizer may lack its vocabulary
        options.setdefault("ctx_init", "")
    errors = []
    for device in ("meta", "cpu"):
        try:
            model = _build(name, size, device)
        except Exception as e:  # noqa: BLE001 - report and go on with the next model
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}")
            continue
        try:
            with torch.device(device):
                apply_peft(model, method, **options)
        except ValueError as e:  # the method does not apply to this model: its reason, in one line
            return {"model": name, "input": model.input_size, "error": str(e)}
        counts = model.parameter_counts()
        return {"model": name, "input": model.input_size, "total": counts["total"], "trainable": counts["trainable"],
                "options": {k: v for k, v in model.peft.items() if k != "method"}}
    return {"model": name, "error": errors[-1] if errors else "unknown"}


def format_peft_table(rows: list[dict]) -> str:
    head = ["model", "input", "total", "trainable", "trainable %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["model"], str(r.get("input", "n/a")), "n/a", "n/a", "n/a"]
        else:
            cells = [r["model"], str(r["input"]), _fmt(r["total"]), f"{r['trainable']:,}",
                     f"{100 * r['trainable'] / r['total']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['model']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + notes if notes else []))


# --peft options: flag -> (option name of models.peft, type); argparse defaults are None (= the method's default)
PEFT_FLAGS = {"--adapter-in": ("adapter_in", str), "--adapter-dim": ("adapter_dim", int),
              "--lora-rank": ("lora_rank", int), "--lora-alpha": ("lora_alpha", float),
              "--lora-dropout": ("lora_dropout", float), "--lora-targets": ("lora_targets", str),
              "--n-ctx": ("n_ctx", int), "--ctx-init": ("ctx_init", str), "--vpt-tokens": ("vpt_tokens", int)}
PEFT_SWITCHES = {"--vpt-deep": "vpt_deep", "--train-decoder": "train_decoder"}


def peft_options(args) -> dict:
    """The method options given on the command line; one that the method does not have is refused."""
    from .peft import PEFT_METHODS
    given = {opt: getattr(args, opt) for opt, _ in PEFT_FLAGS.values() if getattr(args, opt) is not None}
    given.update({opt: True for opt in PEFT_SWITCHES.values() if getattr(args, opt)})
    if args.peft is None:
        if given:
            raise ValueError(f"{', '.join(given)}: method options need --peft METHOD")
        return {}
    wrong = [o for o in given if o not in PEFT_METHODS[args.peft]]
    if wrong:
        flags = ", ".join("--" + o.replace("_", "-") for o in wrong)
        raise ValueError(f"{flags} does not apply to --peft {args.peft}; its options: "
                         f"{', '.join('--' + o.replace('_', '-') for o in PEFT_METHODS[args.peft])}")
    return given


def get_args_parser() -> argparse.ArgumentParser:
    from .peft import PEFT_METHODS
    ap = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="base", choices=["base", "tiny"], help="architecture size (default base)")
    ap.add_argument("--models", default=",".join(MODEL_SPECS), help="comma-separated model names")
    ap.add_argument("--peft", default=None, choices=list(PEFT_METHODS),
                    help="count parameters with this parameter-efficient method applied (docs/peft.md)")
    unset = {"adapter_in": "every part the model supports (vision,text,cond)", "lora_targets": "per model"}
    for flag, (opt, typ) in PEFT_FLAGS.items():
        owners = [m for m, opts in PEFT_METHODS.items() if opt in opts]
        defaults = "/".join(str(PEFT_METHODS[m][opt]) for m in owners)
        ap.add_argument(flag, dest=opt, type=typ, default=None,
                        help=f"--peft {'/'.join(owners)} option (default {unset.get(opt, defaults)})")
    ap.add_argument("--vpt-deep", dest="vpt_deep", action="store_true", help="--peft vpt: prompt tokens in every "
                    "layer up to the last tapped one (default: the first layer only)")
    ap.add_argument("--train-decoder", dest="train_decoder", action="store_true",
                    help="--peft: train the decoder too (default frozen)")
    return ap


def main(args) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    options = peft_options(args)
    if args.peft:
        rows = [peft_row(n, args.size, args.peft, options) for n in names]
        shown = next((r["options"] for r in rows if "options" in r), options)
        shown = ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
        print(f"Parameters (M = 1e6) of the {args.size} models with --peft {args.peft} ({shown}), "
              f"built without weights.")
        print(format_peft_table(rows))
        return 0
    rows = [count_row(n, args.size) for n in names]
    print(f"Parameters (M = 1e6) of the {args.size} models, built without weights; "
          f"trainable counts per freeze setting (n/a = nothing to freeze).")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
