"""Compute prompt attributes for a prepared dataset and write prompts P0..P9 into its manifests.

    python make_prompts.py --data kvasir                       # all splits, in place
    python make_prompts.py --data kvasir --stats --dry-run     # only print the attribute spread

For every record of ``<prompts_root>/<data>/<split>.json`` the mask (``<data_root>/<data>/masks``)
and, for photographic datasets, the image under it give number, size, location, shape, colour and
bounding box (rules and thresholds: ``datasets/attributes.py``); record metadata gives class name,
CAMUS view / cycle / sex / age / image quality, BUSI tumour type, CheXlocalize view and the other
pathologies present. The record gets an ``"attributes"`` dict and its ``"prompts"`` are rebuilt by
``datasets/prompt_templates.py`` (other fields are kept; ``bbox`` is filled in when absent).
Manifests are rewritten atomically (temporary file + ``os.replace``).
The per-record functions live in ``datasets/prompt_builder.py`` (shared with ``datasets.make_manifest``);
a dataset registered with ``python -m datasets.make_manifest`` works here too (``--data-root`` names its registry).

Empty masks: number "no", no size/location/shape/colour (BUSI normal images get the "No tumor"
prompt). ``--vqa MODEL`` asks a transformers visual-question-answering model for shape and colour
instead of the mask rules (off by default). The rule-based path has no randomness; ``--seed`` is
passed to the VQA pipeline set-up (``transformers.set_seed``) so both paths are reproducible.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from datasets import prompt_templates as T
from datasets.prompt_builder import family_for, process_manifest
from util.errors import run_cli
from util.io import write_json_atomic

#: Attributes summarised by ``--stats`` (in this order, when present).
STATS_ATTRIBUTES = ("class_name", "number", "size", "location", "shape", "colour", "tumor_type",
                    "view", "cycle", "sex", "age", "image_quality", "pathology")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("make_prompts.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=f"dataset name: {', '.join(sorted(T.FAMILY))}")
    p.add_argument("--data-root", default="data", help="folder holding <data>/images and <data>/masks")
    p.add_argument("--prompts-root", default="prompts_json", help="folder holding <data>/<split>.json")
    p.add_argument("--splits", default="train,val,test",
                   help="comma-separated splits; missing split files are skipped with a note")
    p.add_argument("--seed", type=int, default=0, help="seed (used by the --vqa path)")
    p.add_argument("--stats", action="store_true", help="print the distribution of each attribute")
    p.add_argument("--dry-run", action="store_true", help="compute everything, write nothing")
    p.add_argument("--vqa", default=None, metavar="MODEL",
                   help="transformers visual-question-answering model (hub id or local folder) "
                        "asked for shape and colour; off by default")
    return p


# ----------------------------------------------------------------------------- VQA (optional)
def load_vqa(model: str, seed: int = 0):
    """A transformers visual-question-answering pipeline; clear error when it cannot load."""
    try:
        from transformers import pipeline, set_seed
    except ImportError as e:  # pragma: no cover - transformers is pinned in requirements
        raise ImportError(f"--vqa needs transformers: {e}") from None
    set_seed(seed)
    try:
        return pipeline("visual-question-answering", model=model)
    except (OSError, ValueError, EnvironmentError) as e:
        raise FileNotFoundError(
            f"could not load VQA model {model!r}: {type(e).__name__}: {e}\n"
            "This machine may be offline: download the model elsewhere and pass its local folder "
            "to --vqa, or leave --vqa out to use the mask/colour rules.") from None


# ----------------------------------------------------------------------------- statistics
def _stat_values(key: str, value) -> list:
    if value is None:
        return []
    if key == "age" and isinstance(value, int):
        lo = value // 10 * 10
        return [f"{lo}-{lo + 9}"]
    return list(value) if isinstance(value, list) else [value]


def attribute_stats(records: list) -> dict:
    """``{attribute: Counter(value -> count)}``; per-target lists count each target."""
    stats = {}
    for rec in records:
        attrs = rec.get("attributes", {})
        for key in STATS_ATTRIBUTES:
            if key in attrs:
                counter = stats.setdefault(key, Counter())
                values = _stat_values(key, attrs[key])
                counter.update(values if values else ["(none)"])
    return stats


def format_stats(stats: dict, n_records: int, title: str) -> str:
    lines = [f"{title}: {n_records} records (size and location count each target)",
             f"{'attribute':<12} {'value':<28} {'count':>6} {'share':>7}"]
    for key in STATS_ATTRIBUTES:
        if key not in stats:
            continue
        counter = stats[key]
        total = sum(counter.values())
        for value, count in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            lines.append(f"{key:<12} {str(value):<28} {count:>6} {100 * count / total:>6.1f}%")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(args) -> dict:
    family_for(args.data, args.data_root)  # clear error for unknown names; user datasets too
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    vqa = load_vqa(args.vqa, args.seed) if args.vqa else None
    done, all_records = {}, []
    for split in splits:
        path = os.path.join(args.prompts_root, args.data, f"{split}.json")
        if not os.path.exists(path):
            print(f"[make_prompts] {path} not found: split '{split}' skipped")
            continue
        with open(path) as f:
            records = json.load(f)
        new = process_manifest(records, args.data, args.data_root, path, vqa)
        if not args.dry_run:
            write_json_atomic(path, new)
        print(f"[make_prompts] {path}: {len(new)} records" + (" (dry run, not written)" if args.dry_run else ""))
        done[split] = new
        all_records.extend(new)
    if not done:
        raise FileNotFoundError(f"no manifest found for '{args.data}' under {args.prompts_root}/{args.data}/ "
                         f"(splits {splits}); run `python -m datasets.prepare {args.data} --src ...` first")
    if args.stats:
        print(format_stats(attribute_stats(all_records), len(all_records),
                           f"{args.data} ({', '.join(done)})"))
    return done


if __name__ == "__main__":
    run_cli(main, get_args_parser())
