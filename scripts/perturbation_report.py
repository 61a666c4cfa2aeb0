"""Relative Dice change of perturbed prompts vs. the unperturbed manifest (paper's Figure 3).

    python scripts/perturbation_report.py runs/kvasir/cris/p6/eval/ --csv perturbation.csv
    python scripts/perturbation_report.py base.json test__size__opposite.json ...

Inputs are ``evaluate.py`` summary JSONs: ``{"dice_mean", "dice_std", "iou_mean", "n",
"manifest", "prompt", ...}``; ``manifest: null`` means the dataset's own ``<split>.json``. A
folder is searched recursively for ``*.json``; files that are not summaries are skipped.

A summary belongs to a perturbed manifest when the manifest's file name is
``<stem>__<attribute>__<kind>.json`` (as written by ``perturb_prompts.py``). Its baseline is the
summary of the source manifest (path from ``<stem>__index.json`` next to the perturbed manifest
when present, otherwise any manifest named ``<stem>.json``) with the same prompt key and the same
values of the grouping keys present (``model``, ``data``, ``checkpoint``, ``run``, ``split``,
``all_prompts``, ``swap_prompts``). ``--baseline`` forces one baseline summary for all.

relative change (%) = 100 * (dice_perturbed - dice_baseline) / dice_baseline
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys

PERTURBED_NAME = re.compile(r"^(?P<stem>.+?)__(?P<attribute>[a-z_]+?)__(?P<kind>random_word|opposite|drop)\.json$")
GROUP_KEYS = ("model", "data", "checkpoint", "run", "split", "all_prompts", "swap_prompts")
COLUMNS = ("group", "prompt", "attribute", "kind", "n", "dice_baseline", "dice_perturbed",
           "relative_change_pct", "manifest")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="summary JSON files and/or folders to search")
    p.add_argument("--baseline", default=None, help="summary JSON of the unperturbed manifest (optional)")
    p.add_argument("--csv", default="perturbation_report.csv", help="output CSV path ('' to skip)")
    return p


def collect_paths(inputs) -> list[str]:
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(sorted(glob.glob(os.path.join(item, "**", "*.json"), recursive=True)))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return paths


def load_summary(path: str) -> dict | None:
    """The summary dict, or None when the file is not an evaluate.py summary."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict) or "dice_mean" not in obj:
        return None
    obj = dict(obj)
    obj["_path"] = path
    return obj


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _group(summary: dict) -> tuple:
    return tuple((k, str(summary[k])) for k in GROUP_KEYS if k in summary)


def source_manifest(manifest: str, stem: str) -> str:
    """The unperturbed manifest of a perturbed one (from the index file, else by name)."""
    index = os.path.join(os.path.dirname(manifest), f"{stem}__index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                return _norm(json.load(f)["source"])
        except (OSError, KeyError, json.JSONDecodeError):
            pass
    return stem + ".json"  # matched by file name only


def _manifest_name(summary: dict) -> str | None:
    """Manifest file name of a summary; evaluate.py writes ``manifest: null`` for the
    dataset's own ``<split>.json``."""
    if summary.get("manifest"):
        return os.path.basename(str(summary["manifest"]))
    return f"{summary['split']}.json" if summary.get("split") else None


def find_baseline(summary: dict, stem: str, baselines: list[dict]) -> dict | None:
    source = source_manifest(summary["manifest"], stem)
    same = [b for b in baselines if b.get("prompt") == summary.get("prompt")
            and _group(b) == _group(summary)]
    exact = [b for b in same if b.get("manifest") and _norm(b["manifest"]) == source]
    if exact:
        return exact[0]
    by_name = [b for b in same if _manifest_name(b) == os.path.basename(source)]
    return by_name[-1] if by_name else None  # repeated evaluations of the same model and prompt agree


def relative_change(perturbed: float, baseline: float) -> float:
    if baseline == 0:
        return float("nan")
    return 100.0 * (perturbed - baseline) / baseline


def build_rows(summaries: list[dict], forced_baseline: dict | None = None) -> tuple[list[dict], list[str]]:
    """Report rows (one per perturbed summary) and notes on summaries without a baseline."""
    perturbed, baselines = [], []
    for s in summaries:
        m = PERTURBED_NAME.match(os.path.basename(str(s["manifest"]))) if s.get("manifest") else None
        (perturbed if m else baselines).append((s, m))
    baselines = [s for s, _ in baselines]
    rows, notes = [], []
    for s, m in perturbed:
        base = forced_baseline or find_baseline(s, m["stem"], baselines)
        if base is None:
            notes.append(f"no baseline summary for {s['_path']} (manifest {s['manifest']}, prompt {s.get('prompt')})")
            continue
        rows.append({"group": " ".join(v for _, v in _group(s)), "prompt": s.get("prompt", ""),
                     "attribute": m["attribute"], "kind": m["kind"], "n": s.get("n", ""),
                     "dice_baseline": float(base["dice_mean"]), "dice_perturbed": float(s["dice_mean"]),
                     "relative_change_pct": relative_change(float(s["dice_mean"]), float(base["dice_mean"])),
                     "manifest": s["manifest"]})
    rows.sort(key=lambda r: (r["group"], r["prompt"], r["attribute"], r["kind"]))
    return rows, notes


def format_table(rows: list[dict]) -> str:
    head = f"{'group':<30} {'prompt':<6} {'attribute':<14} {'kind':<12} {'n':>5} {'base':>7} {'pert':>7} {'rel %':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['group'][-30:]:<30} {str(r['prompt']):<6} {r['attribute']:<14} {r['kind']:<12} "
                     f"{str(r['n']):>5} {r['dice_baseline']:>7.4f} {r['dice_perturbed']:>7.4f} "
                     f"{r['relative_change_pct']:>+8.2f}")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})


def main(args) -> list[dict]:
    summaries = [s for s in map(load_summary, collect_paths(args.inputs)) if s is not None]
    forced = load_summary(args.baseline) if args.baseline else None
    if args.baseline and forced is None:
        raise SystemExit(f"--baseline {args.baseline} is not an evaluate.py summary JSON")
    if not summaries:
        raise SystemExit(f"no evaluate.py summary JSON (with 'dice_mean' and 'manifest') found in {args.inputs}")
    rows, notes = build_rows(summaries, forced)
    for note in notes:
        print(f"[perturbation_report] {note}", file=sys.stderr)
    if not rows:
        raise SystemExit("no perturbed summary with a baseline: evaluate the unperturbed manifest too "
                         "(same model and prompt), or pass --baseline")
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"[perturbation_report] wrote {args.csv}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(get_args_parser().parse_args())
