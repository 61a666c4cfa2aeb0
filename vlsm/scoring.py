"""Scoring a model on a dataset: build the loader, run ``engine.evaluate``, write ``per_image.csv`` and
``summary.json`` (with the metric card).  One library function, called by train.py (test split), evaluate.py,
zeroshot.py and the study runner.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

import engine
from datasets import build_dataset, collate, swap_dataset_prompts
from util.checkpoint import new_dir
from util.io import write_csv_atomic, write_json_atomic
from util.metrics import metric_card
from util.summary import summarize


def results_name(data: str, split: str, prompt: str, manifest: str | None = None, swap_prompts: bool = False,
                 tag: str = "") -> str:
    """``<data>_<split>_<prompt>[_<manifest stem>][_swapped][_<tag>]``: the results folder's name."""
    name = f"{data.replace(',', '+')}_{split}_{prompt}"
    if manifest:
        name += "_" + os.path.splitext(os.path.basename(manifest))[0]
    if swap_prompts:
        name += "_swapped"
    if tag:
        name += "_" + tag
    return name


def default_manifest(prompts_root: str, data: str, split: str) -> str | None:
    """The manifest file read for a single dataset (None for pooled data)."""
    return None if "," in data else os.path.abspath(os.path.join(prompts_root, data, f"{split}.json"))


THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def pick_threshold(model, loader, device, grid=THRESHOLD_GRID) -> tuple[float, dict]:
    """The probability threshold with the best mean Dice on ``loader`` (the validation split), and the sweep
    ``{str(threshold): Dice}``.  Ties go to the threshold nearest 0.5."""
    sweep = {}
    for t in grid:
        sweep[str(t)] = engine.evaluate(model, loader, device, t, amp=device.type == "cuda", desc=f"thr {t}")["dice"]
    best = max(grid, key=lambda t: (sweep[str(t)], -abs(t - 0.5)))
    return best, sweep


def threshold_on_val(model, data: str, prompt: str, device, **data_kw) -> tuple[float, dict]:
    """``--threshold auto`` for a trained model: the best threshold on ``data``'s validation split."""
    ds = build_dataset(data, "val", model=model, prompt=prompt, return_original=True, **data_kw)
    return pick_threshold(model, DataLoader(ds, batch_size=16, shuffle=False, collate_fn=collate,
                                            pin_memory=device.type == "cuda"), device)


def truncated_prompts(model, rows: list[dict]) -> dict:
    """How many of the scored records had a prompt longer than the text encoder's context, which the tokenizer
    cut (models/text.py's truncation: the first tokens are kept, one warning, then counted): ``{"records",
    "distinct", "context_length"}``; ``{}`` for a model without a counting tokenizer (the text-free CNNs)."""
    import warnings
    tok = getattr(model, "tokenizer", None)
    warner = getattr(tok, "warner", None)
    if warner is None:
        return {}
    cut = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in sorted({str(r.get("prompt", "")) for r in rows}):
            before = warner.n_truncated
            tok([text])
            if warner.n_truncated > before:
                cut.add(text)
    return {"records": sum(str(r.get("prompt", "")) in cut for r in rows), "distinct": len(cut),
            "context_length": getattr(tok, "context_length", None)}


def score(model, data: str, split: str, prompt: str, threshold: float, device, *, eval_root: str | None = None,
          out: str | None = None, data_root: str = "data", prompts_root: str = "prompts_json",
          manifest: str | None = None, all_prompts: bool = False, swap_prompts: bool = False,
          batch_size: int = 16, workers: int = 0, on_bad_sample: str = "error", save_masks: bool = False,
          tag: str = "", extra: dict | None = None, quiet: bool = False, drop_duplicates: bool = False,
          target: str | None = None) -> dict:
    """Score ``model`` on ``data``/``split`` with ``prompt``.  Results go to ``out`` (an exact new folder) or
    ``eval_root/<results_name>`` (suffixed when taken: never overwritten).  Returns the summary plus
    ``results_dir``.  ``drop_duplicates``/``target``: as ``datasets.build_dataset`` (--drop-duplicates,
    --target)."""
    ds = build_dataset(data, split, model=model, prompt=prompt, data_root=data_root, prompts_root=prompts_root,
                       manifest=manifest, all_prompts=all_prompts, return_original=True,
                       on_bad_sample=on_bad_sample, drop_duplicates=drop_duplicates, target=target)
    if swap_prompts:
        ds, dropped = swap_dataset_prompts(ds)
        if dropped and not quiet:
            print(f"--swap-prompts: {dropped} records have no other target in their image and are left out")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    if out is None and eval_root is None:
        raise ValueError("score() needs eval_root or out")
    name = results_name(data, split, prompt, manifest, swap_prompts, tag)
    out_dir = new_dir(out, os.path.join(eval_root or "", name))

    save_fn = None
    if save_masks:
        mask_dir = os.path.join(out_dir, "masks")
        os.makedirs(mask_dir)

        def save_fn(item, pred):
            stem = os.path.splitext(item["mask_name"])[0]
            path = os.path.join(mask_dir, f"{stem}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(pred.numpy().astype(np.uint8) * 255).save(path)

    res = engine.evaluate(model, loader, device, threshold, per_image=True, save_fn=save_fn,
                          amp=device.type == "cuda")
    rows = res.pop("rows")
    write_csv_atomic(os.path.join(out_dir, "per_image.csv"), rows, list(rows[0]) if rows else ["dice"])
    stats = summarize(rows)
    cut = truncated_prompts(model, rows)
    if cut.get("records") and not quiet:
        print(f"{data} {split}: {cut['records']} of {len(rows)} prompts ({cut['distinct']} distinct) are longer than "
              f"the text encoder's {cut['context_length']} tokens and were truncated (models/text.py)")
    summary = {**stats, "data": data, "split": split, "prompt": prompt, "truncated_prompts": cut,
               "manifest": manifest or default_manifest(prompts_root, data, split),
               "swap_prompts": swap_prompts, "all_prompts": all_prompts,
               "threshold": threshold, **({"target": target} if target else {}), **(extra or {}),
               "skipped": res["skipped"], "metric_card": metric_card(threshold)}
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary, indent=2)
    if not quiet:
        print(f"{data} {split} prompt {prompt}{' (swapped)' if swap_prompts else ''}: "
              f"Dice {stats['dice_mean']:.4f} ± {stats['dice_std']:.4f}  IoU {stats['iou_mean']:.4f} ± "
              f"{stats['iou_std']:.4f}  (n={stats['n']}, threshold {threshold}; pooled Dice "
              f"{stats['dice_pooled']:.4f}) -> {out_dir}")
        if stats["absent"]["n"]:
            a = stats["absent"]
            print(f"  {a['n']} records with an empty target: false-positive rate {a['false_positive_rate']:.3f}, "
                  f"mean predicted area {a['mean_predicted_area']:.4f} of the image; Dice over the "
                  f"{stats['present']['n']} present targets {stats['present']['dice_mean']:.4f}")
        if res["skipped"]:
            print(f"skipped {len(res['skipped'])} bad samples (listed in summary.json)")
    return {**summary, "results_dir": out_dir}
