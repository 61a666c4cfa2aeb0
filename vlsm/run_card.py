"""A run folder that describes itself: ``model.safetensors`` + ``config.json`` (everything needed to rebuild
and use the model offline), ``provenance.json`` (seed, package versions, git commit, sha256 of every manifest),
and a short ``README.md`` model card.  ``models.model_from_checkpoint(RUN)`` loads such a folder copied to
another machine (with or without its .pth files)."""
from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata

from util.io import atomic_output, file_sha256, write_atomic, write_json_atomic
from util.metrics import metric_card

PACKAGES = ("torch", "torchvision", "transformers", "open_clip_torch", "timm", "segmentation-models-pytorch",
            "numpy", "pillow", "safetensors")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def dataset_manifests(ds) -> list[str]:
    """The manifest files behind a (possibly pooled) dataset."""
    parts = getattr(ds, "datasets", [ds])
    return [p.manifest_path for p in parts if os.path.isfile(getattr(p, "manifest_path", ""))]


def model_config(model, threshold: float) -> dict:
    tok = model.tokenizer
    return {"model_name": model.name, "build_args": dict(model.build_args), "input_size": model.input_size,
            "image_mean": list(model.image_mean), "image_std": list(model.image_std), "uses_text": model.uses_text,
            "tokenizer": None if tok is None else {"class": type(tok).__name__,
                                                   "context_length": getattr(tok, "context_length", None)},
            "threshold": threshold, "output": "logits (B,1,h,w); sigmoid > threshold after bilinear upsampling "
                                              "to the original size",
            **({"peft": model.peft, "peft_base": model.peft_base} if getattr(model, "peft", None) else {})}


def write_run_card(run_dir: str, model, args, threshold: float, manifests: list[str], final: dict) -> None:
    """model.safetensors (a parameter-efficient run: peft.safetensors, the method's tensors only, on top of the
    base named in config.json), config.json, provenance.json and README.md for a finished run (best weights)."""
    from safetensors.torch import save_file, save_model
    if getattr(model, "peft", None):
        from models.peft import peft_state_dict
        with atomic_output(os.path.join(run_dir, "peft.safetensors")) as tmp:
            save_file({k: v.contiguous() for k, v in peft_state_dict(model).items()}, tmp)
    else:
        with atomic_output(os.path.join(run_dir, "model.safetensors")) as tmp:
            save_model(model, tmp)
    cfg = model_config(model, threshold)
    vocab = cfg["build_args"].get("tokenizer_path")
    if vocab and os.path.isfile(vocab):  # travel with the run: a copied folder needs no hub cache
        shutil.copyfile(vocab, os.path.join(run_dir, "vocab.txt"))
        cfg["build_args"]["tokenizer_path"] = "vocab.txt"
    write_json_atomic(os.path.join(run_dir, "config.json"), cfg, indent=2)
    prov = {"seed": args.seed, "packages": package_versions(), "git": git_commit(),
            "manifests": {os.path.abspath(m): file_sha256(m) for m in sorted(set(manifests))}}
    write_json_atomic(os.path.join(run_dir, "provenance.json"), prov, indent=2)
    write_atomic(os.path.join(run_dir, "README.md"), model_card(cfg, args, final, prov))


def write_model_folder(out_dir: str, model, threshold: float) -> None:
    """A plain model folder (config.json + model.safetensors) that ``models.model_from_checkpoint`` loads: e.g. a
    LoRA run merged into its base weights (``export.py --merge``)."""
    from safetensors.torch import save_model
    with atomic_output(os.path.join(out_dir, "model.safetensors")) as tmp:
        save_model(model, tmp)
    write_json_atomic(os.path.join(out_dir, "config.json"), model_config(model, threshold), indent=2)


def model_card(cfg: dict, args, final: dict, prov: dict) -> str:
    test = final.get("test") or {}
    card = metric_card(cfg["threshold"])
    lines = [f"# {cfg['model_name']} fine-tuned on {args.data} (prompt {args.prompt})", "",
             f"- model: `{cfg['model_name']}`, size `{cfg['build_args'].get('size')}`, input {cfg['input_size']} px, "
             f"initial weights `{args.weights}`, preset `{args.preset}`, seed {args.seed}",
             f"- data: `{args.data}` (manifests and their sha256 in provenance.json); prompt key `{args.prompt}`",
             f"- best validation Dice {final.get('best_val_dice', float('nan')):.4f} at epoch "
             f"{final.get('best_epoch')}; stopped by {final.get('stopped_by')}"]
    if test:
        lines.append(f"- test ({test.get('n')} records): Dice {test['dice_mean']:.4f} ± {test['dice_std']:.4f}, "
                     f"IoU {test['iou_mean']:.4f}; pooled Dice {test.get('dice_pooled', float('nan')):.4f}")
    lines += ["", "## Metric card", ""] + [f"- {k}: {v}" for k, v in card.items()]
    lines += ["", "## Use it", "", "```bash",
              "python evaluate.py --checkpoint THIS_FOLDER --data DATA --prompt p1",
              "python predict.py --checkpoint THIS_FOLDER --images my_scans/ --prompt \"...\"",
              "```", "", "In Python: `from models import model_from_checkpoint; model, cfg = "
              "model_from_checkpoint('THIS_FOLDER')` (works offline: config.json + model.safetensors suffice).",
              "", f"Code: git {prov['git'].get('commit')}; packages: "
              + ", ".join(f"{k} {v}" for k, v in prov["packages"].items() if v), ""]
    return "\n".join(lines)
