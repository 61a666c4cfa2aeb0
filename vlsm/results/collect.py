"""Finding results and reading them into rows: every ``summary.json`` (train.py's test evaluation, evaluate.py,
zeroshot.py, text_report.py, the study's steps) becomes one row of results.csv; every ``text_reliance.json`` one
text-reliance report; a study step with a marker of its own is read by its record's ``read``
(:mod:`vlsm.study.steps`).  A file that cannot be read is never dropped silently: it is listed with the reason
(:attr:`Collected.unreadable`), and the report shows the list.

A row is identified by: setting (finetuned / zeroshot), step (the study's step names), model, training data and
prompt, test data, split, evaluation prompt, preset, seed, freeze setting, the swept training options of a study's
sweep (``sweep``: ``batch_size=16 lr=0.001 ...``), perturbed attribute and kind, text-reliance condition. Summaries
written by the study carry these fields; for the others they are read from the run's ``args.json`` and the summary
itself.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from datasets.perturb import KINDS
from vlsm.cli import freeze_name
from vlsm.study.steps import LEGACY_NAMES, STEPS

SUMMARY, TEXT_RELIANCE = "summary.json", "text_reliance.json"
PERTURBED_NAME = re.compile(rf"^(?P<stem>.+?)__(?P<attribute>[a-z_]+?)__(?P<kind>{'|'.join(KINDS)})\.json$")
COLUMNS = ("study", "cell", "setting", "step", "model", "size", "train_data", "train_prompt", "test_data", "split",
           "prompt", "preset", "seed", "freeze", "sweep", "attribute", "kind", "condition", "n", "dice_mean",
           "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_unit", "hd95_excluded",
           "threshold", "resolution", "empty_mask_rule", "manifest", "results_dir")
KEY = ("setting", "step", "model", "size", "train_data", "train_prompt", "test_data", "split", "prompt",
       "preset", "freeze", "sweep", "attribute", "kind", "condition")  # a result, up to its seed
STUDY_FIELDS = ("study", "cell", "setting", "step", "model", "size", "train_data", "train_prompt", "preset", "seed",
                "freeze", "sweep")


class Unreadable(ValueError):
    """A results file that exists but cannot be used; its message says why."""


@dataclass
class Collected:
    """What :func:`collect` found: the rows of results.csv, the text-reliance reports, and the files it could
    not read (``{"path", "reason"}``), which the report lists."""
    rows: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)


def _custom_readers() -> dict:
    """Marker file name -> reader, for the study steps that read their own marker (``StepType.read``)."""
    return {s.marker: s.read for s in STEPS.values() if s.read}


def find_files(roots, names) -> dict[str, list[str]]:
    """File name -> the files of that name under ``roots`` (folders, searched recursively, or files), sorted."""
    names = set(names)
    out: dict[str, list[str]] = {n: [] for n in names}
    for root in roots:
        if os.path.isfile(root):
            if os.path.basename(root) in names:
                out[os.path.basename(root)].append(root)
            continue
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such folder")
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for f in sorted(set(files) & names):
                out[f].append(os.path.join(d, f))
    return out


def load_json(path: str):
    """The JSON object in ``path``; :class:`Unreadable` when it cannot be parsed or holds no object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise Unreadable(f"cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise Unreadable("holds no JSON object")
    return obj


def _run_args(results_dir: str, unreadable: list) -> tuple[str, dict]:
    """(run folder, its args.json) for a results folder inside a run (``RUN/eval/<name>/``), else ("", {})."""
    d = results_dir
    for _ in range(3):
        d = os.path.dirname(d)
        path = os.path.join(d, "args.json")
        if os.path.isfile(path):
            try:
                return d, load_json(path)
            except Unreadable as e:
                unreadable.append({"path": path, "reason": f"{e}; the rows of this run lack its training fields"})
                return d, {}
    return "", {}


def _names(data: str) -> list[str]:
    return [n for n in str(data).split(",") if n]


def blank_row(**values) -> dict:
    """A results.csv row: every column, empty unless given."""
    return {**dict.fromkeys(COLUMNS, ""), **values}


def _infer_step(row: dict, s: dict) -> str:
    """The step of a result that does not say (train.py, evaluate.py, zeroshot.py, text_report.py)."""
    ev = "p1" if row["train_prompt"] == "random" else row["train_prompt"]
    if row["condition"]:
        return "text_reliance"
    if row["attribute"]:
        return "perturbation"
    if s.get("swap_prompts"):
        return "swap"
    if row["test_data"] in _names(row["train_data"]):
        return "test" if row["prompt"] == ev else "cross_prompt"
    return "ood" if row["setting"] == "finetuned" else ""


def summary_row(path: str, unreadable: list | None = None) -> dict:
    """The results.csv row of a summary.json; :class:`Unreadable` when it cannot be used."""
    s = load_json(path)
    if "dice_mean" not in s:
        raise Unreadable("holds no dice_mean: not the summary of a scoring")
    res_dir = os.path.dirname(os.path.abspath(path))
    card = s.get("metric_card") or {}
    row = blank_row(split=s.get("split", ""), prompt=s.get("prompt", ""), n=s.get("n", ""), dice_mean=s["dice_mean"],
                    dice_std=s.get("dice_std", ""), iou_mean=s.get("iou_mean", ""), iou_std=s.get("iou_std", ""),
                    hd95_mean=s.get("hd95_mean", ""), hd95_unit=s.get("hd95_unit", ""),
                    hd95_excluded=s.get("hd95_excluded", ""),
                    threshold=s.get("threshold", card.get("threshold", "")),
                    resolution=card.get("resolution", s.get("metric_resolution", "")),
                    empty_mask_rule=card.get("empty_mask_rule", s.get("empty_mask_rule", "")),
                    manifest=s.get("manifest") or "", results_dir=res_dir, test_data=s.get("data", ""),
                    condition=s.get("condition", ""))
    pert = s.get("perturbation") or {}
    m = PERTURBED_NAME.match(os.path.basename(str(s.get("manifest") or "")))
    if pert:
        row.update(attribute=pert.get("attribute", ""), kind=pert.get("kind", ""))
    elif m and not row["condition"]:
        row.update(attribute=m["attribute"], kind=m["kind"])
    run_dir, args = _run_args(res_dir, [] if unreadable is None else unreadable)
    if "setting" in s:  # written by the study
        row.update({k: "" if s.get(k) is None else s[k] for k in STUDY_FIELDS})
        row["step"] = LEGACY_NAMES.get(row["step"], row["step"])
        row["test_data"] = s.get("test_data") or row["test_data"]
    elif s.get("zeroshot"):
        row.update(setting="zeroshot", step="zeroshot", model=s.get("model", ""))
    else:
        row.update(setting="finetuned" if args else "", model=args.get("model", s.get("model", "")),
                   size=args.get("size", ""), train_data=args.get("data", ""), train_prompt=args.get("prompt", ""),
                   preset=args.get("preset", ""), seed=args.get("seed", ""),
                   freeze=(f"peft:{args['peft']}" if args.get("peft") else
                           freeze_name(args.get("freeze_image_encoder"), args.get("freeze_text_encoder")))
                   if args else "")
    row["step"] = row["step"] or _infer_step(row, s)
    row["_run"] = row["cell"] or run_dir or os.path.dirname(res_dir)  # zeroshot.py: one folder per invocation
    return row


def text_reliance_report(path: str) -> dict:
    """A text_reliance.json report; :class:`Unreadable` when it cannot be used."""
    rep = load_json(path)
    if not isinstance(rep.get("conditions"), list):
        raise Unreadable("holds no conditions: not a text-reliance report")
    return rep


def collect(roots) -> Collected:
    """Every result under ``roots``, sorted; what cannot be read is listed, never dropped silently."""
    readers = _custom_readers()
    found = find_files(roots, {SUMMARY, TEXT_RELIANCE} | set(readers))
    out = Collected()
    for name, paths in found.items():
        for path in paths:
            try:
                if name == SUMMARY:
                    out.rows.append(summary_row(path, out.unreadable))
                elif name == TEXT_RELIANCE:
                    out.reports.append(text_reliance_report(path))
                else:
                    rows = readers[name](path)
                    out.rows += [{"_run": r.get("cell") or os.path.dirname(path), **blank_row(**r)} for r in rows]
            except (Unreadable, OSError, ValueError, KeyError, TypeError) as e:
                out.unreadable.append({"path": path, "reason": str(e) or type(e).__name__})
    out.rows.sort(key=lambda r: tuple(str(r[k]) for k in KEY + ("seed", "results_dir")))
    seen = set()
    out.unreadable = [u for u in out.unreadable if not (u["path"] in seen or seen.add(u["path"]))]
    return out
