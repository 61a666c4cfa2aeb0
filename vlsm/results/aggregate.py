"""From rows to numbers: the relative change of perturbed and swapped results against the same run's
unperturbed one, and the mean and sample standard deviation over seeds (one aggregated row per
:data:`.collect.KEY`).  Which steps are baselines and which are measured against them is said by their records
in :mod:`vlsm.study.steps` (``baseline``, ``relative``).
"""
from __future__ import annotations

import math
from collections import OrderedDict

from util.io import write_csv_atomic
from vlsm.study.steps import STEPS

from .collect import KEY

MEAN_COLUMNS = KEY + ("n_seeds", "seeds", "n", "dice_mean", "dice_sd_seeds", "dice_sd_images", "iou_mean",
                      "iou_sd_seeds", "hd95_mean", "hd95_sd_seeds", "hd95_unit", "threshold", "rel_change_pct",
                      "rel_change_sd_seeds")


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values)."""
    v = [float(x) for x in values if x != "" and x is not None and not math.isnan(float(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def relative_changes(rows: list[dict]) -> None:
    """``rel_change_pct`` of each row of a ``relative`` step against the same run's result of a ``baseline``
    step (same test data and prompt, nothing perturbed): 100 (Dice - Dice_base) / Dice_base."""
    baseline = {n for n, s in STEPS.items() if s.baseline}
    relative = {n for n, s in STEPS.items() if s.relative}
    base = {(r["_run"], r["test_data"], r["prompt"]): r for r in rows if r["step"] in baseline and not r["attribute"]}
    for r in rows:
        r.setdefault("rel_change_pct", "")
        if r["step"] in relative:
            b = base.get((r["_run"], r["test_data"], r["prompt"]))
            if b and float(b["dice_mean"]) > 0:
                r["rel_change_pct"] = 100.0 * (float(r["dice_mean"]) - float(b["dice_mean"])) / float(b["dice_mean"])
                r["base_dice"] = b["dice_mean"]


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per KEY: mean and sd over seeds of the runs' mean Dice / IoU (and relative change); ``_rows``
    holds the rows it averages."""
    relative_changes(rows)
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault(tuple(str(r[k]) for k in KEY), []).append(r)
    out = []
    for key, rs in groups.items():
        d_m, d_sd = mean_sd(r["dice_mean"] for r in rs)
        i_m, i_sd = mean_sd(r["iou_mean"] for r in rs)
        h_m, h_sd = mean_sd(r.get("hd95_mean", "") for r in rs)
        img_sd, _ = mean_sd(r["dice_std"] for r in rs)
        rel_m, rel_sd = mean_sd(r.get("rel_change_pct", "") for r in rs)
        ns = sorted({int(r["n"]) for r in rs if r["n"] != ""})
        out.append({**dict(zip(KEY, key)), "n_seeds": len(rs), "seeds": " ".join(str(r["seed"]) for r in rs),
                    "n": ns[0] if len(ns) == 1 else "-".join(map(str, ns[:1] + ns[-1:])), "dice_mean": d_m,
                    "dice_sd_seeds": d_sd, "dice_sd_images": img_sd, "iou_mean": i_m, "iou_sd_seeds": i_sd,
                    "hd95_mean": h_m, "hd95_sd_seeds": h_sd,
                    "hd95_unit": "/".join(sorted({str(r.get("hd95_unit") or "") for r in rs} - {""})),
                    "threshold": rs[0]["threshold"], "rel_change_pct": rel_m, "rel_change_sd_seeds": rel_sd,
                    "_rows": rs})
    return out


def write_csv(rows: list[dict], path: str, columns) -> str:
    """Rows as CSV (floats with 6 decimals, NaN empty), written atomically."""
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6f}"
        return v
    write_csv_atomic(path, [{k: cell(r.get(k, "")) for k in columns} for r in rows], columns)
    return path
