"""How much a trained model relies on its text: the same test images scored with the right prompt and with
prompts that are wrong in known ways.

Conditions (one ``score`` each, results under ``<out>/<data>__<condition>/``):

- ``right``: the record's own prompt (the key the model was trained with; list prompts: the first text);
- ``empty``: "" for every record;
- ``other_target``: the prompt of another target in the same image (records whose image has one other
  target or more; ``datasets.manifest.swap_prompts``);
- ``other_image``: the prompt of a record of another image that names nothing in this image (the next such
  record, cyclically in manifest order);
- ``gibberish``: every letter of the right prompt replaced by a random letter (same length, same spaces);
- ``<attribute>_<kind>``: one attribute changed (:func:`perturb_records`), for each attribute that changes
  the evaluated prompt of at least one record.

``text_gain`` = Dice(right) - Dice(empty).  ``survival[c]`` = Dice(c) / Dice(right on the same records):
the share of the right-prompt Dice that is left when the text is wrong (1 = the text is ignored).

The perturbed-attribute conditions use ``datasets.perturb.perturb_records`` (the one library form of the
paper's Figure 3 perturbations, shared with ``perturb_prompts.py`` and the study runner).
"""
from __future__ import annotations

import csv
import os
import random

from datasets.manifest import load_manifest, swap_prompts
from datasets.medical import image_position
from datasets.perturb import DEFAULT_ATTRIBUTES, perturb_records, perturbable
from util.io import write_atomic, write_csv_atomic, write_json_atomic
from util.metrics import metric_card

from .scoring import score

BASE_CONDITIONS = ("right", "empty", "other_target", "other_image", "gibberish")
CONDITION_LABELS = {"right": "right prompt", "empty": "empty prompt", "other_target": "other target, same image",
                    "other_image": "prompt of another image", "gibberish": "gibberish (same length)"}


# ----------------------------------------------------------------------------- wrong prompts


def evaluated_text(record: dict, key: str) -> str:
    """The text evaluation feeds the model for ``key`` (a list prompt: its first text)."""
    v = record["prompts"][key]
    return v if isinstance(v, str) else v[0]


def _with_text(record: dict, key: str, text: str) -> dict:
    return {**record, "prompts": {**record["prompts"], key: text}}


def gibberish(text: str, rng: random.Random) -> str:
    """Every letter replaced by a random lowercase letter; length, spaces and punctuation kept."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if c.isalpha() else c for c in text)


def other_image_records(records: list[dict], key: str) -> list[dict]:
    """Each record gets the prompt of a record of another image: the first one, going through the next images
    cyclically in manifest order, whose text names nothing in this image (no target of this image has the same
    text); the next image's first record when every text is shared."""
    by_image: dict[tuple, list[str]] = {}   # an image is a file, or a frame or slice of one (slices differ)
    for r in records:
        by_image.setdefault((r["img_name"], image_position(r)), []).append(evaluated_text(r, key))
    images = list(by_image)
    if len(images) < 2:
        raise ValueError("other_image needs at least two images")
    pick = {}
    for i, img in enumerate(images):
        own = set(by_image[img])
        later = (t for j in range(1, len(images)) for t in by_image[images[(i + j) % len(images)]])
        pick[img] = next((t for t in later if t not in own), by_image[images[(i + 1) % len(images)]][0])
    return [_with_text(r, key, pick[(r["img_name"], image_position(r))]) for r in records]


def condition_records(records: list[dict], key: str, condition: str, seed: int = 0) -> list[dict] | None:
    """The records of one base condition (None when it does not apply, e.g. no image has two targets)."""
    if condition == "right":
        return [_with_text(r, key, evaluated_text(r, key)) for r in records]
    if condition == "empty":
        return [_with_text(r, key, "") for r in records]
    if condition == "gibberish":
        rng = random.Random(f"{seed}:gibberish")
        return [_with_text(r, key, gibberish(evaluated_text(r, key), rng)) for r in records]
    if condition == "other_image":
        return other_image_records(records, key)
    if condition == "other_target":
        swapped, _ = swap_prompts(records)
        return [_with_text(r, key, evaluated_text(r, key)) for r in swapped] or None
    raise ValueError(f"unknown condition {condition!r}")


# ----------------------------------------------------------------------------- the report


def _per_image(results_dir: str) -> dict:
    with open(os.path.join(results_dir, "per_image.csv")) as f:
        return {(r["img_name"], r["mask_name"]): float(r["dice"]) for r in csv.DictReader(f)}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def text_reliance(model, data: str, prompt: str, threshold: float, device, out_dir: str, *,
                  data_root: str = "data", prompts_root: str = "prompts_json", split: str = "test",
                  attributes=DEFAULT_ATTRIBUTES, kinds=("opposite",), seed: int = 0, batch_size: int = 16,
                  workers: int = 0, extra: dict | None = None, quiet: bool = True, plot: bool = True) -> dict:
    """Score every condition on ``data``/``split`` and write ``text_reliance.json``/``.md``/``.csv`` (and
    ``text_reliance.png``) into ``out_dir`` (created; must not hold a report yet).  Returns the report."""
    if "," in data:
        raise ValueError("text_reliance takes one dataset; call it once per dataset of a pooled run")
    if prompt == "random":
        prompt = "p1"
    records = load_manifest(os.path.join(prompts_root, data, f"{split}.json"))
    os.makedirs(out_dir, exist_ok=True)
    man_dir = os.path.join(out_dir, "manifests")
    base = {"step": "text_reliance", **(extra or {})}

    jobs = []  # (condition, records, note)
    for c in BASE_CONDITIONS:
        try:
            recs = condition_records(records, prompt, c, seed)
        except ValueError as e:
            recs, note = None, str(e)
        else:
            note = "" if recs else "no image has another target"
        jobs.append((c, recs, note))
    if perturbable(records, data):
        for attribute in attributes:
            for kind in kinds:
                recs = perturb_records(records, data, attribute, kind, seed)
                changed = sum(evaluated_text(a, prompt) != evaluated_text(b, prompt) for a, b in zip(records, recs))
                if changed:
                    jobs.append((f"{attribute}_{kind}", recs, f"{changed}/{len(recs)} prompts changed"))
    rows = []
    right_dice = None
    for condition, recs, note in jobs:
        row = {"condition": condition, "label": CONDITION_LABELS.get(condition, condition.replace("_", " ")),
               "note": note, "n": 0, "dice_mean": float("nan"), "dice_std": float("nan"), "survival": float("nan")}
        if recs:
            path = os.path.join(man_dir, f"{split}__{condition}.json")
            write_json_atomic(path, recs)
            s = score(model, data, split, prompt, threshold, device, out=os.path.join(out_dir, f"{data}__{condition}"),
                      data_root=data_root, prompts_root=prompts_root, manifest=path, batch_size=batch_size,
                      workers=workers, extra={**base, "condition": condition}, quiet=quiet)
            per = _per_image(s["results_dir"])
            if condition == "right":
                right_dice = per
            row.update(n=s["n"], dice_mean=s["dice_mean"], dice_std=s["dice_std"], results_dir=s["results_dir"])
            if right_dice:
                ref = _mean(right_dice[k] for k in per if k in right_dice)
                row["survival"] = s["dice_mean"] / ref if ref > 0 else float("nan")
        rows.append(row)
    by = {r["condition"]: r for r in rows}
    report = {"data": data, "split": split, "prompt": prompt, "threshold": threshold, **(extra or {}),
              "conditions": rows, "text_gain": by["right"]["dice_mean"] - by["empty"]["dice_mean"],
              "survival": {r["condition"]: r["survival"] for r in rows if r["condition"] != "right"},
              "metric_card": metric_card(threshold)}
    write_atomic(os.path.join(out_dir, "text_reliance.md"), format_report(report) + "\n")
    write_csv_atomic(os.path.join(out_dir, "text_reliance.csv"), rows,
                     ["condition", "label", "n", "dice_mean", "dice_std", "survival", "note"])
    if plot:
        plot_report(report, os.path.join(out_dir, "text_reliance.png"))
    write_json_atomic(os.path.join(out_dir, "text_reliance.json"), report)  # last: the study's done marker
    return report


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.2f}"


def format_report(report: dict) -> str:
    card = report["metric_card"]
    lines = [f"Text reliance: {report.get('model', 'model')} on {report['data']} {report['split']}, "
             f"prompt {report['prompt']}",
             "", "| condition | n | Dice (%) | ± std over images | Dice kept vs right prompt (%) | note |",
             "|---|---|---|---|---|---|"]
    for r in report["conditions"]:
        kept = "–" if r["condition"] == "right" else _pct(r["survival"])
        lines.append(f"| {r['label']} | {r['n']} | {_pct(r['dice_mean'])} | {_pct(r['dice_std'])} | {kept} | "
                     f"{r['note']} |")
    lines += ["", f"Text gain (right − empty): {_pct(report['text_gain'])} Dice points.",
              f"Metric card: {card['aggregation']}; threshold {card['threshold']}; resolution {card['resolution']}; "
              f"{card['upsampling']}; empty-mask rule: {card['empty_mask_rule']}. \"Dice kept\" divides by the "
              f"right-prompt Dice of the same records."]
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["conditions"] if r["n"]]
    labels = [r["label"] for r in rows]
    values = [100 * r["dice_mean"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    colours = ["tab:green" if r["condition"] == "right" else "tab:grey" if r["condition"] == "empty" else "tab:red"
               for r in rows]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    right = 100 * report["conditions"][0]["dice_mean"]
    ax.axvline(right, ls="--", c="k", lw=1)
    for i, r in enumerate(rows):
        if r["condition"] != "right" and r["survival"] == r["survival"]:
            ax.text(values[i], i, f" {100 * r['survival']:.0f}% kept", va="center", fontsize=8)
    ax.set_xlabel("Dice (%)")
    ax.set_xlim(0, max(values + [1]) * 1.25)
    ax.set_title(f"{report.get('model', '')} {report['data']} {report['prompt']}: text gain "
                 f"{100 * report['text_gain']:.1f} points", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

