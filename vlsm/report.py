"""Results of many runs in one place: every ``summary.json`` under some folders -> one CSV row each, means and
standard deviations over seeds, Markdown tables in the paper's layouts and PNG plots.

A row is identified by: setting (finetuned / zeroshot), step (test, ood, xprompt, swap, perturb, zeroshot,
text_reliance), model, training data and prompt, test data, split, evaluation prompt, preset, seed, freeze
setting, perturbed attribute and kind, text-reliance condition.  Summaries written by the study runner carry
these fields; for others (train.py, evaluate.py, zeroshot.py) they are read from the run's ``args.json`` and
the summary itself.

Tables (``tables.md``), each followed by its metric card: Table 2 (models x training scheme x test set),
Table 3 (training set x test set, out-of-distribution), Dice by prompt (Figure 2 numbers; with frozen encoders
the layout of Tables 6-7), cross-prompt, swapped prompts, perturbation (relative Dice change per attribute,
Figure 3 numbers) and text reliance.  Plots: Dice by prompt per dataset and model, the out-of-distribution
matrix as a heat map, the relative Dice change under perturbation.

Aggregation over seeds: the mean of the runs' mean Dice, ``±`` the sample standard deviation (ddof 1) over
seeds; a value from a single seed is marked ``*`` and its ``±`` is the standard deviation over images.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import OrderedDict

PERTURBED_NAME = re.compile(r"^(?P<stem>.+?)__(?P<attribute>[a-z_]+?)__(?P<kind>random_word|opposite|drop)\.json$")
COLUMNS = ("study", "cell", "setting", "step", "model", "size", "train_data", "train_prompt", "test_data", "split",
           "prompt", "preset", "seed", "freeze", "attribute", "kind", "condition", "n", "dice_mean", "dice_std",
           "iou_mean", "iou_std", "threshold", "resolution", "empty_mask_rule", "manifest", "results_dir")
KEY = ("setting", "step", "model", "size", "train_data", "train_prompt", "test_data", "split", "prompt",
       "preset", "freeze", "attribute", "kind", "condition")
MEAN_COLUMNS = KEY + ("n_seeds", "seeds", "n", "dice_mean", "dice_sd_seeds", "dice_sd_images", "iou_mean",
                      "iou_sd_seeds", "threshold", "rel_change_pct", "rel_change_sd_seeds")
PROMPT_ORDER = [f"p{i}" for i in range(10)]


# ----------------------------------------------------------------------------- collecting


def find_files(roots, name: str) -> list[str]:
    out = []
    for root in roots:
        if os.path.isfile(root):
            if os.path.basename(root) == name:
                out.append(root)
            continue
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such folder")
        for d, dirs, files in os.walk(root):
            dirs.sort()
            if name in files:
                out.append(os.path.join(d, name))
    return out


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _run_args(results_dir: str) -> tuple[str, dict]:
    """(run folder, its args.json) for a results folder inside a run (``RUN/eval/<name>/``), else ("", {})."""
    d = results_dir
    for _ in range(3):
        d = os.path.dirname(d)
        a = _load(os.path.join(d, "args.json"))
        if isinstance(a, dict):
            return d, a
    return "", {}


def _freeze(args: dict) -> str:
    image, text = bool(args.get("freeze_image_encoder")), bool(args.get("freeze_text_encoder"))
    return {(False, False): "none", (True, False): "image", (False, True): "text", (True, True): "both"}[(image, text)]


def _names(data: str) -> list[str]:
    return [n for n in str(data).split(",") if n]


def summary_row(path: str) -> dict | None:
    """One CSV row for a summary.json (None when the file is not a results summary)."""
    s = _load(path)
    if not isinstance(s, dict) or "dice_mean" not in s:
        return None
    res_dir = os.path.dirname(os.path.abspath(path))
    row = dict.fromkeys(COLUMNS, "")
    card = s.get("metric_card") or {}
    row.update(split=s.get("split", ""), prompt=s.get("prompt", ""), n=s.get("n", ""), dice_mean=s["dice_mean"],
               dice_std=s.get("dice_std", ""), iou_mean=s.get("iou_mean", ""), iou_std=s.get("iou_std", ""),
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
    run_dir, args = _run_args(res_dir)
    if "setting" in s:  # written by the study runner
        for k in ("study", "cell", "setting", "step", "model", "size", "train_data", "train_prompt", "preset",
                  "seed", "freeze"):
            row[k] = "" if s.get(k) is None else s.get(k)
        row["test_data"] = s.get("test_data") or row["test_data"]
    elif s.get("zeroshot"):
        row.update(setting="zeroshot", step="zeroshot", model=s.get("model", ""))
    else:
        row.update(setting="finetuned" if args else "", model=args.get("model", s.get("model", "")),
                   size=args.get("size", ""), train_data=args.get("data", ""), train_prompt=args.get("prompt", ""),
                   preset=args.get("preset", ""), seed=args.get("seed", ""), freeze=_freeze(args) if args else "")
    if not row["step"]:
        ev = "p1" if row["train_prompt"] == "random" else row["train_prompt"]
        if row["condition"]:
            row["step"] = "text_reliance"
        elif row["attribute"]:
            row["step"] = "perturb"
        elif s.get("swap_prompts"):
            row["step"] = "swap"
        elif row["test_data"] in _names(row["train_data"]):
            row["step"] = "test" if row["prompt"] == ev else "xprompt"
        elif row["setting"] == "finetuned":
            row["step"] = "ood"
    row["_run"] = row["cell"] or run_dir or os.path.dirname(res_dir)  # zeroshot.py: one folder per invocation
    return row


def collect(roots) -> list[dict]:
    rows = [r for r in map(summary_row, find_files(roots, "summary.json")) if r is not None]
    rows.sort(key=lambda r: tuple(str(r[k]) for k in KEY + ("seed", "results_dir")))
    return rows


# ----------------------------------------------------------------------------- aggregation


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
    """``rel_change_pct`` of each perturbed / swapped row against the same run's unperturbed result
    (same test data and prompt): 100 (Dice - Dice_base) / Dice_base."""
    base = {(r["_run"], r["test_data"], r["prompt"]): r for r in rows
            if r["step"] in ("test", "ood", "xprompt", "zeroshot") and not r["attribute"]}
    for r in rows:
        r.setdefault("rel_change_pct", "")
        if r["step"] in ("perturb", "swap"):
            b = base.get((r["_run"], r["test_data"], r["prompt"]))
            if b and float(b["dice_mean"]) > 0:
                r["rel_change_pct"] = 100.0 * (float(r["dice_mean"]) - float(b["dice_mean"])) / float(b["dice_mean"])
                r["base_dice"] = b["dice_mean"]


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per KEY: mean and sd over seeds of the runs' mean Dice / IoU (and relative change)."""
    relative_changes(rows)
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault(tuple(str(r[k]) for k in KEY), []).append(r)
    out = []
    for key, rs in groups.items():
        d_m, d_sd = mean_sd(r["dice_mean"] for r in rs)
        i_m, i_sd = mean_sd(r["iou_mean"] for r in rs)
        img_sd, _ = mean_sd(r["dice_std"] for r in rs)
        rel_m, rel_sd = mean_sd(r.get("rel_change_pct", "") for r in rs)
        ns = sorted({int(r["n"]) for r in rs if r["n"] != ""})
        out.append({**dict(zip(KEY, key)), "n_seeds": len(rs), "seeds": " ".join(str(r["seed"]) for r in rs),
                    "n": ns[0] if len(ns) == 1 else "-".join(map(str, ns[:1] + ns[-1:])), "dice_mean": d_m,
                    "dice_sd_seeds": d_sd, "dice_sd_images": img_sd, "iou_mean": i_m, "iou_sd_seeds": i_sd,
                    "threshold": rs[0]["threshold"], "rel_change_pct": rel_m, "rel_change_sd_seeds": rel_sd,
                    "_rows": rs})
    return out


def write_csv(rows: list[dict], path: str, columns) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6f}" if isinstance(r.get(k), float) and not math.isnan(r[k]) else
                            "" if isinstance(r.get(k), float) else r.get(k, "")) for k in columns})
    return path


# ----------------------------------------------------------------------------- formatting


def fmt(a: dict | None, pct: bool = True) -> str:
    """``mean ± sd`` in percent: sd over seeds, or (single seed, marked *) over images."""
    if not a or a["dice_mean"] != a["dice_mean"]:
        return "–"
    m = 100 * a["dice_mean"]
    if a["n_seeds"] >= 2:
        return f"{m:.2f} ± {100 * a['dice_sd_seeds']:.2f}"
    sd = a["dice_sd_images"]
    return f"{m:.2f} ± {100 * sd:.2f}*" if sd == sd else f"{m:.2f}*"


def fmt_rel(a: dict | None) -> str:
    if not a or a["rel_change_pct"] != a["rel_change_pct"]:
        return "–"
    if a["n_seeds"] >= 2 and a["rel_change_sd_seeds"] == a["rel_change_sd_seeds"]:
        return f"{a['rel_change_pct']:+.2f} ± {a['rel_change_sd_seeds']:.2f}"
    return f"{a['rel_change_pct']:+.2f}*"


def metric_card(rows: list[dict]) -> str:
    """The metric card of a table built from ``rows`` (aggregated rows or raw rows)."""
    raw = [r for a in rows for r in a.get("_rows", [a])]
    by_thr: dict = {}
    for r in raw:
        by_thr.setdefault(str(r.get("threshold", "")), set()).add(r.get("model", ""))
    thr = "; ".join(f"{t} ({', '.join(sorted(m))})" for t, m in sorted(by_thr.items()))
    res = ", ".join(sorted({str(r.get("resolution") or "?") for r in raw}))
    empty = ", ".join(sorted({str(r.get("empty_mask_rule") or "?") for r in raw}))
    ns = sorted({int(r["n"]) for r in raw if r.get("n") not in ("", None)})
    n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}" if ns else "?"
    return (f"*Metric card* — aggregation: Dice per image, averaged over the test images of a run ({n} images), "
            f"then mean over seeds; ± = sample std (ddof 1) over seeds; * = one seed, ± = std over images. "
            f"Threshold: {thr}. Resolution: {res} (logits upsampled bilinearly, then sigmoid and threshold). "
            f"Empty-mask rule: {empty}.")


def _order(values, reference) -> list:
    ref = list(reference)
    return sorted(set(values), key=lambda v: (ref.index(v) if v in ref else len(ref), str(v)))


def _datasets_order() -> list[str]:
    from datasets.registry import DATASETS
    return list(DATASETS)


def _models_order() -> list[str]:
    from models import list_models
    return list_models()


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def _group(rows: list[dict], keys) -> OrderedDict:
    g: OrderedDict = OrderedDict()
    for r in rows:
        g.setdefault(tuple(r[k] for k in keys), []).append(r)
    return g


def _setting_label(preset, freeze, size) -> str:
    return f"preset {preset or '?'}, frozen encoders: {freeze or 'none'}" + (f", size {size}" if size else "")


def table2(agg: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    """Table 2 layout per (training prompt, preset, freeze, size): rows = training scheme x model (Individual =
    trained and tested on the same dataset; each pooled training set), columns = test sets."""
    src = [a for a in agg if a["setting"] == "finetuned" and a["step"] in ("test", "ood")]
    out = []
    for (prompt, preset, freeze, size), rs in _group(src, ("train_prompt", "preset", "freeze", "size")).items():
        cols = _order([a["test_data"] for a in rs], _datasets_order())
        models = _order([a["model"] for a in rs], _models_order())
        at = {(a["train_data"], a["model"], a["test_data"]): a for a in rs}
        body, used = [], []
        singles = [a for a in rs if "," not in a["train_data"] and a["train_data"] == a["test_data"]]
        if singles:
            for m in models:
                cells = [at.get((d, m, d)) for d in cols]
                if any(cells):
                    body.append(["Individual", m] + [fmt(c) for c in cells])
                    used += [c for c in cells if c]
        for pooled in _order([a["train_data"] for a in rs if "," in a["train_data"]], []):
            for m in models:
                cells = [at.get((pooled, m, d)) for d in cols]
                if any(cells):
                    body.append([f"Pooled {pooled.replace(',', ' + ')}", m] + [fmt(c) for c in cells])
                    used += [c for c in cells if c]
        if body:
            title = (f"Table 2 layout — Dice (%) by training scheme, prompt {prompt}, "
                     f"{_setting_label(preset, freeze, size)}")
            out.append((title, used, _table(["trained on", "model"] + cols, body)))
    return out


def table3(agg: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    """Table 3 layout: rows = training set x model, columns = every test set; [in-distribution] values."""
    src = [a for a in agg if a["setting"] == "finetuned" and a["step"] in ("test", "ood")]
    out = []
    for (prompt, preset, freeze, size), rs in _group(src, ("train_prompt", "preset", "freeze", "size")).items():
        if not any(a["step"] == "ood" for a in rs):
            continue
        cols = _order([a["test_data"] for a in rs], _datasets_order())
        models = _order([a["model"] for a in rs], _models_order())
        at = {(a["train_data"], a["model"], a["test_data"]): a for a in rs}
        body = []
        for train in _order([a["train_data"] for a in rs], _datasets_order()):
            for m in models:
                cells = [at.get((train, m, d)) for d in cols]
                if any(cells):
                    body.append([train.replace(",", " + "), m] + [
                        f"[{fmt(c)}]" if c and d in _names(train) else fmt(c) for c, d in zip(cells, cols)])
        title = (f"Table 3 layout — Dice (%) out of distribution, prompt {prompt}, "
                 f"{_setting_label(preset, freeze, size)}; [ ] = test set of a training distribution")
        out.append((title, rs, _table(["trained on", "model"] + cols, body)))
    return out


def by_prompt(agg: list[dict]) -> list[tuple[str, list[dict], list[str], tuple]]:
    """Figure 2 numbers: rows = dataset x model, columns = prompts; fine-tuned (trained and tested on one dataset
    with the same prompt) and zero-shot, per (preset, freeze, size)."""
    ft = [a for a in agg if a["setting"] == "finetuned" and a["step"] == "test" and a["train_data"] == a["test_data"]]
    zs = [a for a in agg if a["setting"] == "zeroshot"]
    out = []
    for setting, src, keys in (("zero-shot", zs, ("size",)), ("fine-tuned", ft, ("preset", "freeze", "size"))):
        for key, rs in _group(src, keys).items():
            prompts = _order([a["prompt"] for a in rs], PROMPT_ORDER)
            at = {(a["test_data"], a["model"], a["prompt"]): a for a in rs}
            body = []
            for d in _order([a["test_data"] for a in rs], _datasets_order()):
                for m in _order([a["model"] for a in rs], _models_order()):
                    cells = [at.get((d, m, p)) for p in prompts]
                    if any(cells):
                        body.append([d, m] + [fmt(c) for c in cells])
            if setting == "zero-shot":
                title = f"Dice (%) by prompt, zero-shot (Figure 2 numbers){', size ' + key[0] if key[0] else ''}"
            else:
                preset, freeze, size = key
                layout = "Tables 6-7 layout" if freeze not in ("", "none") else "Figure 2 numbers"
                title = f"Dice (%) by prompt, fine-tuned ({layout}), {_setting_label(preset, freeze, size)}"
            out.append((title, rs, _table(["dataset", "model"] + prompts, body), (setting,) + key))
    return out


def cross_prompt(agg: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    src = [a for a in agg if a["setting"] == "finetuned" and a["step"] in ("test", "xprompt")]
    if not any(a["step"] == "xprompt" for a in src):
        return []
    prompts = _order([a["prompt"] for a in src], PROMPT_ORDER)
    at = _group(src, ("model", "train_data", "train_prompt", "test_data", "preset", "freeze"))
    body = []
    for (m, train, tp, test, preset, freeze), rs in at.items():
        cell = {a["prompt"]: a for a in rs}
        body.append([m, train.replace(",", " + "), tp, test, f"{preset}/{freeze}"] + [
            (f"**{fmt(cell.get(p))}**" if p == tp else fmt(cell.get(p))) for p in prompts])
    title = "Cross-prompt — Dice (%) of a model trained with one prompt (bold) and tested with others"
    return [(title, src, _table(["model", "trained on", "train prompt", "tested on", "preset/frozen"] + prompts,
                                body))]


def swap_table(agg: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    sw = [a for a in agg if a["step"] == "swap"]
    if not sw:
        return []
    base = {(a["model"], a["train_data"], a["train_prompt"], a["test_data"], a["prompt"], a["preset"], a["freeze"]): a
            for a in agg if a["step"] == "test"}
    body = []
    for a in sw:
        b = base.get((a["model"], a["train_data"], a["train_prompt"], a["test_data"], a["prompt"], a["preset"],
                      a["freeze"]))
        body.append([a["model"], a["train_data"].replace(",", " + "), a["test_data"], a["prompt"], fmt(b), fmt(a),
                     fmt_rel(a)])
    return [("Swapped prompts — Dice (%) with each record's prompt and with another target's prompt", sw,
             _table(["model", "trained on", "tested on", "prompt", "right prompt", "other target's prompt",
                     "relative change (%)"], body))]


def perturbation(agg: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    src = [a for a in agg if a["step"] == "perturb"]
    if not src:
        return []
    combos = sorted({(a["attribute"], a["kind"]) for a in src},
                    key=lambda c: (c[1] != "random_word", c[1], c[0]))
    body = []
    for (m, train, test, prompt, preset, freeze), rs in _group(
            src, ("model", "train_data", "test_data", "prompt", "preset", "freeze")).items():
        at = {(a["attribute"], a["kind"]): a for a in rs}
        base, _ = mean_sd(r.get("base_dice", "") for r in rs[0]["_rows"])
        body.append([m, train.replace(",", " + "), test, prompt, f"{100 * base:.2f}" if base == base else "–"]
                    + [fmt_rel(at.get(c)) for c in combos])
    title = ("Perturbation (Figure 3 numbers) — relative Dice change (%) when one attribute of the prompt is replaced "
             "by a random uncommon word, its opposite value, or dropped")
    return [(title, src, _table(["model", "trained on", "tested on", "prompt", "Dice (%)"] +
                                [f"{a} {k.replace('_', ' ')}" for a, k in combos], body))]


def text_reliance_table(reports: list[dict]) -> list[tuple[str, list[dict], list[str]]]:
    if not reports:
        return []
    conds = ("right", "empty", "other_target", "other_image", "gibberish")
    body, raw = [], []
    for rep in reports:
        by = {c["condition"]: c for c in rep["conditions"]}
        pert = [c for c in rep["conditions"] if c["condition"] not in conds and c["n"]]

        def d(c):
            return "–" if not c or not c["n"] else f"{100 * c['dice_mean']:.2f}"

        def kept(c):
            return "–" if not c or not c["n"] or c["survival"] != c["survival"] else f"{100 * c['survival']:.0f}%"

        body.append([str(rep.get("model", "")), str(rep.get("train_data", "")).replace(",", " + "), rep["data"],
                     rep["prompt"], str(rep.get("seed", ""))] + [d(by.get(c)) for c in conds] +
                    [f"{100 * rep['text_gain']:+.2f}"] + [kept(by.get(c)) for c in conds[2:]] +
                    ["; ".join(f"{c['condition']} {kept(c)}" for c in pert) or "–"])
        raw.append({"model": rep.get("model", ""), "threshold": rep.get("threshold", ""),
                    "n": by["right"]["n"], "resolution": rep["metric_card"]["resolution"],
                    "empty_mask_rule": rep["metric_card"]["empty_mask_rule"]})
    header = ["model", "trained on", "tested on", "prompt", "seed", "right", "empty", "other target", "other image",
              "gibberish", "text gain", "kept: other target", "kept: other image", "kept: gibberish",
              "kept: perturbed attribute"]
    return [("Text reliance — Dice (%) with right and wrong prompts; text gain = right − empty; kept = Dice with "
             "wrong text / Dice with the right text on the same records", raw, _table(header, body))]


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _slug(*parts) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9+.-]+", "-", str(p)) for p in parts if p not in ("", None))


def plot_by_prompt(rs: list[dict], title: str, path: str) -> str:
    plt = _plt()
    sets = _order([a["test_data"] for a in rs], _datasets_order())
    prompts = _order([a["prompt"] for a in rs], PROMPT_ORDER)
    ncol = min(4, len(sets))
    nrow = math.ceil(len(sets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    for ax, d in zip(axes.flat, sets):
        for m in _order([a["model"] for a in rs if a["test_data"] == d], _models_order()):
            at = {a["prompt"]: a for a in rs if a["test_data"] == d and a["model"] == m}
            xs = [i for i, p in enumerate(prompts) if p in at]
            ys = [100 * at[prompts[i]]["dice_mean"] for i in xs]
            err = [100 * at[prompts[i]]["dice_sd_seeds"] if at[prompts[i]]["n_seeds"] > 1 else 0 for i in xs]
            ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", capsize=3, label=m)
        ax.set_xticks(range(len(prompts)), [p.upper() for p in prompts])
        ax.set_ylim(0, 100)
        ax.set_title(d)
        ax.set_ylabel("Dice (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(sets):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ood(rs: list[dict], title: str, path: str) -> str:
    plt = _plt()
    import numpy as np
    models = _order([a["model"] for a in rs], _models_order())
    trains = _order([a["train_data"] for a in rs], _datasets_order())
    tests = _order([a["test_data"] for a in rs], _datasets_order())
    fig, axes = plt.subplots(1, len(models), figsize=(1.3 * len(tests) * len(models) + 3, 0.7 * len(trains) + 2),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes[0], models):
        at = {(a["train_data"], a["test_data"]): a for a in rs if a["model"] == m}
        mat = np.full((len(trains), len(tests)), np.nan)
        for i, t in enumerate(trains):
            for j, d in enumerate(tests):
                if (t, d) in at:
                    mat[i, j] = 100 * at[(t, d)]["dice_mean"]
        im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for i in range(len(trains)):
            for j in range(len(tests)):
                if mat[i, j] == mat[i, j]:
                    ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if mat[i, j] < 60 else "black")
        ax.set_xticks(range(len(tests)), tests, rotation=45, ha="right")
        ax.set_yticks(range(len(trains)), [t.replace(",", "+") for t in trains])
        ax.set_xlabel("tested on")
        ax.set_title(m)
    axes[0][0].set_ylabel("trained on")
    fig.colorbar(im, ax=list(axes[0]), label="Dice (%)", shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_perturbation(rs: list[dict], path: str) -> str:
    plt = _plt()
    groups = _group(rs, ("model", "train_data", "test_data", "prompt", "preset", "freeze"))
    attrs = sorted({a["attribute"] for a in rs})
    kinds = [k for k in ("random_word", "opposite", "drop") if any(a["kind"] == k for a in rs)]
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(5, 1.4 * len(attrs) + 2), 2.8 * len(groups)),
                             squeeze=False)
    width = 0.8 / max(1, len(kinds))
    for ax, (key, g) in zip(axes[:, 0], groups.items()):
        at = {(a["attribute"], a["kind"]): a for a in g}
        for k, kind in enumerate(kinds):
            vals = [at[(a, kind)]["rel_change_pct"] if (a, kind) in at else float("nan") for a in attrs]
            err = [at[(a, kind)]["rel_change_sd_seeds"] if (a, kind) in at and at[(a, kind)]["n_seeds"] > 1 else 0
                   for a in attrs]
            ax.bar([i + (k - (len(kinds) - 1) / 2) * width for i in range(len(attrs))], vals, width,
                   yerr=err if any(err) else None, capsize=3, label=kind.replace("_", " "))
        ax.axhline(0, c="k", lw=0.8)
        ax.set_xticks(range(len(attrs)), attrs)
        ax.set_ylabel("relative Dice change (%)")
        m, train, test, prompt, preset, freeze = key
        ax.set_title(f"{m} trained on {train.replace(',', '+')}, tested on {test}, {prompt}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report


def write_report(roots, out_dir: str, title: str = "Results", plots: bool = True) -> dict:
    """Collect, aggregate, write ``results.csv``, ``results_mean.csv``, ``tables.md`` and the PNG plots into
    ``out_dir`` (files there are replaced: they are derived from the summaries).  Returns what was written."""
    roots = [roots] if isinstance(roots, str) else list(roots)
    rows = collect(roots)
    reports = []
    for p in find_files(roots, "text_reliance.json"):
        rep = _load(p)
        if isinstance(rep, dict) and "conditions" in rep:
            reports.append(rep)
    if not rows and not reports:
        raise FileNotFoundError(f"no summary.json (results of evaluate.py, train.py, zeroshot.py or a study) "
                                f"under {', '.join(roots)}")
    os.makedirs(out_dir, exist_ok=True)
    agg = aggregate(rows)
    written = {"csv": write_csv(rows, os.path.join(out_dir, "results.csv"), COLUMNS + ("rel_change_pct",)),
               "mean_csv": write_csv(agg, os.path.join(out_dir, "results_mean.csv"), MEAN_COLUMNS), "plots": [],
               "tables": []}
    lines = [f"# {title}", "", f"{len(rows)} results from {', '.join(roots)}; "
             f"{len(agg)} after averaging over seeds. Values: Dice (%).", ""]
    sections = table2(agg) + table3(agg)
    prompt_tables = by_prompt(agg)
    sections += [(t, r, tab) for t, r, tab, _ in prompt_tables]
    sections += cross_prompt(agg) + swap_table(agg) + perturbation(agg) + text_reliance_table(reports)
    for t, r, tab in sections:
        lines += [f"## {t}", ""] + tab + ["", metric_card(r), ""]
        written["tables"].append(t)
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write("\n".join(lines))
    written["markdown"] = os.path.join(out_dir, "tables.md")
    if plots:
        for t, r, _, key in prompt_tables:
            written["plots"].append(plot_by_prompt(r, t, os.path.join(out_dir, f"dice_by_prompt_{_slug(*key)}.png")))
        for t, r, _ in table3(agg):
            k = (r[0]["train_prompt"], r[0]["preset"], r[0]["freeze"], r[0]["size"])
            written["plots"].append(plot_ood(r, t.split(";")[0], os.path.join(out_dir, f"ood_heatmap_{_slug(*k)}.png")))
        pert = [a for a in agg if a["step"] == "perturb"]
        if pert:
            written["plots"].append(plot_perturbation(pert, os.path.join(out_dir, "perturbation.png")))
    return written
