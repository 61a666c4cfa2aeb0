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

import numpy as np

from datasets import prompt_templates as T
from datasets.attributes import mask_attributes
from datasets.io import BadSampleError, read_image, read_mask
from datasets.manifest import write_json_atomic

#: Record fields copied (normalised) into the attributes, by family.
METADATA_FIELDS = {"camus": ("view", "cycle", "sex", "age", "image_quality"),
                   "chexlocalize": ("view", "pathology"),
                   "busi": ("tumor_type",),
                   "non_radiology": ()}

#: Attributes summarised by ``--stats`` (in this order, when present).
STATS_ATTRIBUTES = ("class_name", "number", "size", "location", "shape", "colour", "tumor_type",
                    "view", "cycle", "sex", "age", "image_quality", "pathology")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True,
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


# ----------------------------------------------------------------------------- metadata
_VIEW = {"2ch": "two-chamber", "2-chamber": "two-chamber", "two-chamber": "two-chamber",
         "two chamber": "two-chamber", "4ch": "four-chamber", "4-chamber": "four-chamber",
         "four-chamber": "four-chamber", "four chamber": "four-chamber", "frontal": "frontal",
         "ap": "frontal", "pa": "frontal", "lateral": "lateral", "ll": "lateral"}
_CYCLE = {"ed": "end of the diastole", "diastole": "end of the diastole",
          "end-diastole": "end of the diastole", "end diastole": "end of the diastole",
          "end of the diastole": "end of the diastole", "es": "end of the systole",
          "systole": "end of the systole", "end-systole": "end of the systole",
          "end systole": "end of the systole", "end of the systole": "end of the systole"}
_SEX = {"f": "female", "female": "female", "woman": "female", "m": "male", "male": "male",
        "man": "male"}


def _lookup(table: dict, value, field: str, where: str) -> str:
    key = str(value).strip().lower()
    if key not in table:
        raise ValueError(f"{where}: unknown {field} {value!r}; expected one of {sorted(set(table))}")
    return table[key]


def _canonical_pathology(name: str) -> str:
    key = str(name).replace("_", " ").strip().lower()
    for p in T.CHEX_PATHOLOGIES:
        if p.lower() == key:
            return p
    return str(name).strip()


def metadata_attributes(record: dict, dataset: str, where: str) -> dict:
    """Class name and metadata attributes of a record, normalised to the template vocabulary."""
    family = T.family_of(dataset)
    out = {}
    name = record.get("class_name")
    if family == "chexlocalize":
        own = record.get("pathology")
        name = name or (own if isinstance(own, str) else None)
        if not name:
            raise ValueError(f"{where}: CheXlocalize record needs 'class_name' (its pathology)")
        out["class_name"] = _canonical_pathology(name)
    elif family == "camus":
        if not name:
            raise ValueError(f"{where}: CAMUS record needs 'class_name' (e.g. 'myocardium')")
        out["class_name"] = str(name).strip().lower()
    else:
        out["class_name"] = str(name).strip() if name else T.CLASS_NAMES[dataset]
    for field in METADATA_FIELDS[family]:
        value = record.get(field)
        if field == "pathology":  # the other pathologies present in the image
            value = next((record[k] for k in ("pathologies", "pathologies_present", "other_pathologies")
                          if isinstance(record.get(k), list)), value if isinstance(value, list) else None)
            if value is not None:
                value = [_canonical_pathology(v) for v in value]
        elif field == "tumor_type" and value is None:  # BUSI: fall back on the file name
            stem = str(record.get("img_name", "")).lower()
            value = next((t for t in ("benign", "malignant", "normal") if t in stem), None)
        if value is None or value == "":
            continue
        if field == "view":
            value = _lookup(_VIEW, value, field, where)
        elif field == "cycle":
            value = _lookup(_CYCLE, value, field, where)
        elif field == "sex":
            value = _lookup(_SEX, value, field, where)
        elif field == "age":
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: age {value!r} is not a whole number of years") from None
        elif field in ("image_quality", "tumor_type"):
            value = str(value).strip().lower()
        out[field] = value
    return out


# ----------------------------------------------------------------------------- VQA (optional)
VQA_QUESTIONS = {"shape": "What is the shape of the {name}?", "colour": "What is the color of the {name}?"}


def load_vqa(model: str, seed: int = 0):
    """A transformers visual-question-answering pipeline; clear error when it cannot load."""
    try:
        from transformers import pipeline, set_seed
    except ImportError as e:  # pragma: no cover - transformers is pinned in requirements
        raise SystemExit(f"--vqa needs transformers: {e}") from None
    set_seed(seed)
    try:
        return pipeline("visual-question-answering", model=model)
    except (OSError, ValueError, EnvironmentError) as e:
        raise SystemExit(
            f"could not load VQA model {model!r}: {type(e).__name__}: {e}\n"
            "This machine may be offline: download the model elsewhere and pass its local folder "
            "to --vqa, or leave --vqa out to use the mask/colour rules.") from None


def vqa_attributes(vqa, image, class_name: str, family: str) -> dict:
    """Shape (and colour for photographic images) answered by the VQA pipeline."""
    keys = ("shape", "colour") if family == "non_radiology" else ("shape",)
    out = {}
    for key in keys:
        answers = vqa(image=image, question=VQA_QUESTIONS[key].format(name=class_name), top_k=1)
        answer = answers[0] if isinstance(answers, list) else answers
        text = str(answer.get("answer", "")).strip().lower() if isinstance(answer, dict) else ""
        out[key] = text or None
    return out


# ----------------------------------------------------------------------------- per record
def record_attributes(record: dict, dataset: str, data_root: str, where: str, vqa=None) -> dict:
    """Attributes of one record: mask rules + (photographic) colour + metadata (+ VQA)."""
    family = T.family_of(dataset)
    for key in ("img_name", "mask_name"):
        if not record.get(key):
            raise ValueError(f"{where}: record has no {key!r}")
    mask_path = os.path.join(data_root, dataset, "masks", record["mask_name"])
    mask = read_mask(mask_path)
    need_image = family == "non_radiology" or vqa is not None
    image = None
    if need_image:
        img_path = os.path.join(data_root, dataset, "images", record["img_name"])
        pil, (h, w) = read_image(img_path)
        if (h, w) != mask.shape:
            raise BadSampleError(f"{where}: image {img_path} is {w}x{h} but mask {mask_path} is "
                                 f"{mask.shape[1]}x{mask.shape[0]}; re-run datasets.prepare")
        image = pil
    attrs = mask_attributes(mask, np.asarray(image) if family == "non_radiology" else None)
    attrs.update(metadata_attributes(record, dataset, where))
    if vqa is not None and attrs["count"] > 0:
        attrs.update(vqa_attributes(vqa, image, attrs["class_name"], family))
    return attrs


def process_manifest(records: list, dataset: str, data_root: str, path: str, vqa=None) -> list:
    """New records with ``attributes`` and rebuilt ``prompts`` (input records are not changed)."""
    if not isinstance(records, list):
        raise ValueError(f"{path}: a manifest must be a JSON list of records")
    out = []
    for i, record in enumerate(records):
        where = f"{path} record {i} ({record.get('img_name', '?')})"
        attrs = record_attributes(record, dataset, data_root, where, vqa)
        new = dict(record)
        new["attributes"] = attrs
        new["prompts"] = T.build_prompts(dataset, attrs)
        if new.get("bbox") is None and attrs["bbox"] is not None:
            new["bbox"] = attrs["bbox"]
        out.append(new)
    return out


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
    T.family_of(args.data)  # clear error for unknown names
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
        raise SystemExit(f"no manifest found for '{args.data}' under {args.prompts_root}/{args.data}/ "
                         f"(splits {splits}); run `python -m datasets.prepare {args.data} --src ...` first")
    if args.stats:
        print(format_stats(attribute_stats(all_records), len(all_records),
                           f"{args.data} ({', '.join(done)})"))
    return done


if __name__ == "__main__":
    main(get_args_parser().parse_args())
