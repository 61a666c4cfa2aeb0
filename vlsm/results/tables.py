"""The tables of tables.md.  Every builder takes the aggregated rows (:func:`.aggregate.aggregate`) and returns a
list of :class:`Table`: Table 2 (training scheme x test set), Table 3 (out-of-distribution matrix), Dice by
prompt (Figure 2 numbers; Tables 6-7 with frozen encoders), cross-prompt, swapped prompts, perturbation (Figure 3
numbers), text reliance, and the results of any other step, so that no result is left out of the tables; the
results of a study's sweep (its cells with swept training options) go to :func:`search` (Table 4's search) only.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from datasets.prompt_templates import ALL_PROMPT_KEYS

from .aggregate import mean_sd

#: steps that a layout table below shows; rows of any other step go to :func:`other_steps`
LAID_OUT = ("test", "ood", "zeroshot", "cross_prompt", "swap", "perturbation", "text_reliance")


@dataclass
class Table:
    """One table: a title, a header, body rows (strings), the results its numbers come from (``sources``: for
    the metric card and the plots), a note printed under it (the metric card) and the key naming its plot."""
    title: str
    columns: list
    rows: list
    sources: list = field(default_factory=list)
    notes: str = ""
    key: tuple = ()

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + ["", self.notes] if self.notes else lines)


def fmt(a: dict | None) -> str:
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


def card_note(rows: list[dict]) -> str:
    """The metric card of a table, in words, from the results behind it (aggregated or raw rows)."""
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


def _table(title, columns, rows, sources, key=()) -> Table:
    return Table(title, list(columns), rows, sources, card_note(sources), key)


def order(values, reference) -> list:
    ref = list(reference)
    return sorted(set(values), key=lambda v: (ref.index(v) if v in ref else len(ref), str(v)))


def datasets_order() -> list[str]:
    from datasets.registry import DATASETS
    return list(DATASETS)


def models_order() -> list[str]:
    from models import list_models
    return list_models()


def group(rows: list[dict], keys) -> OrderedDict:
    g: OrderedDict = OrderedDict()
    for r in rows:
        g.setdefault(tuple(r[k] for k in keys), []).append(r)
    return g


def _setting(preset, freeze, size) -> str:
    return f"preset {preset or '?'}, frozen encoders: {freeze or 'none'}" + (f", size {size}" if size else "")


def _trained(agg):
    return [a for a in agg if a["setting"] == "finetuned" and a["step"] in ("test", "ood")]


def table2(agg: list[dict]) -> list[Table]:
    """Table 2 layout per (training prompt, preset, freeze, size): rows = training scheme x model (Individual =
    trained and tested on the same dataset; each pooled training set), columns = test sets."""
    out = []
    for (prompt, preset, freeze, size), rs in group(_trained(agg), ("train_prompt", "preset", "freeze",
                                                                      "size")).items():
        cols = order([a["test_data"] for a in rs], datasets_order())
        models = order([a["model"] for a in rs], models_order())
        at = {(a["train_data"], a["model"], a["test_data"]): a for a in rs}
        body, used = [], []
        schemes = [("Individual", None)] + [(f"Pooled {p.replace(',', ' + ')}", p)
                                            for p in order([a["train_data"] for a in rs if "," in a["train_data"]], [])]
        for label, pooled in schemes:
            for m in models:
                cells = [at.get((pooled or d, m, d)) for d in cols]
                if any(cells):
                    body.append([label, m] + [fmt(c) for c in cells])
                    used += [c for c in cells if c]
        if body:
            out.append(_table(f"Table 2 layout — Dice (%) by training scheme, prompt {prompt}, "
                              f"{_setting(preset, freeze, size)}", ["trained on", "model"] + cols, body, used))
    return out


def table3(agg: list[dict]) -> list[Table]:
    """Table 3 layout: rows = training set x model, columns = every test set; [in-distribution] values."""
    out = []
    for key, rs in group(_trained(agg), ("train_prompt", "preset", "freeze", "size")).items():
        if not any(a["step"] == "ood" for a in rs):
            continue
        cols = order([a["test_data"] for a in rs], datasets_order())
        at = {(a["train_data"], a["model"], a["test_data"]): a for a in rs}
        body = []
        for train in order([a["train_data"] for a in rs], datasets_order()):
            for m in order([a["model"] for a in rs], models_order()):
                cells = [at.get((train, m, d)) for d in cols]
                if any(cells):
                    body.append([train.replace(",", " + "), m] + [
                        f"[{fmt(c)}]" if c and d in train.split(",") else fmt(c) for c, d in zip(cells, cols)])
        prompt, preset, freeze, size = key
        out.append(_table(f"Table 3 layout — Dice (%) out of distribution, prompt {prompt}, "
                          f"{_setting(preset, freeze, size)}; [ ] = test set of a training distribution",
                          ["trained on", "model"] + cols, body, rs, key))
    return out


def by_prompt(agg: list[dict]) -> list[Table]:
    """Figure 2 numbers: rows = dataset x model, columns = prompts; fine-tuned (trained and tested on one dataset
    with the same prompt) and zero-shot, per (preset, freeze, size)."""
    ft = [a for a in agg if a["setting"] == "finetuned" and a["step"] == "test" and a["train_data"] == a["test_data"]]
    zs = [a for a in agg if a["setting"] == "zeroshot"]
    out = []
    for setting, src, keys in (("zero-shot", zs, ("size",)), ("fine-tuned", ft, ("preset", "freeze", "size"))):
        for key, rs in group(src, keys).items():
            prompts = order([a["prompt"] for a in rs], ALL_PROMPT_KEYS)
            at = {(a["test_data"], a["model"], a["prompt"]): a for a in rs}
            body = []
            for d in order([a["test_data"] for a in rs], datasets_order()):
                for m in order([a["model"] for a in rs], models_order()):
                    cells = [at.get((d, m, p)) for p in prompts]
                    if any(cells):
                        body.append([d, m] + [fmt(c) for c in cells])
            if setting == "zero-shot":
                title = f"Dice (%) by prompt, zero-shot (Figure 2 numbers){', size ' + key[0] if key[0] else ''}"
            else:
                layout = "Tables 6-7 layout" if key[1] not in ("", "none") else "Figure 2 numbers"
                title = f"Dice (%) by prompt, fine-tuned ({layout}), {_setting(*key)}"
            out.append(_table(title, ["dataset", "model"] + prompts, body, rs, (setting,) + key))
    return out


def cross_prompt(agg: list[dict]) -> list[Table]:
    """A model trained with one prompt (bold) and tested with others."""
    src = [a for a in agg if a["setting"] == "finetuned" and a["step"] in ("test", "cross_prompt")]
    if not any(a["step"] == "cross_prompt" for a in src):
        return []
    prompts = order([a["prompt"] for a in src], ALL_PROMPT_KEYS)
    body = []
    for (m, train, tp, test, preset, freeze), rs in group(
            src, ("model", "train_data", "train_prompt", "test_data", "preset", "freeze")).items():
        at = {a["prompt"]: a for a in rs}
        body.append([m, train.replace(",", " + "), tp, test, f"{preset}/{freeze}"] + [
            (f"**{fmt(at.get(p))}**" if p == tp else fmt(at.get(p))) for p in prompts])
    return [_table("Cross-prompt — Dice (%) of a model trained with one prompt (bold) and tested with others",
                   ["model", "trained on", "train prompt", "tested on", "preset/frozen"] + prompts, body, src)]


def swap(agg: list[dict]) -> list[Table]:
    """Each record's prompt against the prompt of another target of the same image."""
    sw = [a for a in agg if a["step"] == "swap"]
    if not sw:
        return []
    keys = ("model", "train_data", "train_prompt", "test_data", "prompt", "preset", "freeze")
    base = {tuple(a[k] for k in keys): a for a in agg if a["step"] == "test"}
    body = [[a["model"], a["train_data"].replace(",", " + "), a["test_data"], a["prompt"],
             fmt(base.get(tuple(a[k] for k in keys))), fmt(a), fmt_rel(a)] for a in sw]
    return [_table("Swapped prompts — Dice (%) with each record's prompt and with another target's prompt",
                   ["model", "trained on", "tested on", "prompt", "right prompt", "other target's prompt",
                    "relative change (%)"], body, sw)]


def perturbation(agg: list[dict]) -> list[Table]:
    """Figure 3 numbers: relative Dice change per perturbed attribute and kind."""
    src = [a for a in agg if a["step"] == "perturbation"]
    if not src:
        return []
    combos = sorted({(a["attribute"], a["kind"]) for a in src}, key=lambda c: (c[1] != "random_word", c[1], c[0]))
    body = []
    for (m, train, test, prompt, preset, freeze), rs in group(
            src, ("model", "train_data", "test_data", "prompt", "preset", "freeze")).items():
        at = {(a["attribute"], a["kind"]): a for a in rs}
        base, _ = mean_sd(r.get("base_dice", "") for r in rs[0]["_rows"])
        body.append([m, train.replace(",", " + "), test, prompt, f"{100 * base:.2f}" if base == base else "–"]
                    + [fmt_rel(at.get(c)) for c in combos])
    return [_table("Perturbation (Figure 3 numbers) — relative Dice change (%) when one attribute of the prompt is "
                   "replaced by a random uncommon word, its opposite value, another value of the dataset (same "
                   "set), or dropped",
                   ["model", "trained on", "tested on", "prompt", "Dice (%)"]
                   + [f"{a} {k.replace('_', ' ')}" for a, k in combos], body, src)]


def text_reliance(reports: list[dict]) -> list[Table]:
    """One row per text-reliance report: Dice per condition, the text gain and the Dice kept."""
    if not reports:
        return []
    from vlsm.text_report import BASE_CONDITIONS, CONDITION_LABELS
    wrong = BASE_CONDITIONS[2:]  # other target, other image, gibberish: "kept" is measured for these

    def dice(c):
        return "–" if not c or not c["n"] else f"{100 * c['dice_mean']:.2f}"

    def kept(c):
        return "–" if not c or not c["n"] or c["survival"] != c["survival"] else f"{100 * c['survival']:.0f}%"

    body, raw = [], []
    for rep in reports:
        by = {c["condition"]: c for c in rep["conditions"]}
        pert = [c for c in rep["conditions"] if c["condition"] not in BASE_CONDITIONS and c["n"]]
        body.append([str(rep.get("model", "")), str(rep.get("train_data", "")).replace(",", " + "), rep["data"],
                     rep["prompt"], str(rep.get("seed", ""))] + [dice(by.get(c)) for c in BASE_CONDITIONS]
                    + [f"{100 * rep['text_gain']:+.2f}"] + [kept(by.get(c)) for c in wrong]
                    + ["; ".join(f"{c['condition']} {kept(c)}" for c in pert) or "–"])
        card = rep.get("metric_card") or {}
        raw.append({"model": rep.get("model", ""), "threshold": rep.get("threshold", ""),
                    "n": by.get("right", {}).get("n", ""), "resolution": card.get("resolution", ""),
                    "empty_mask_rule": card.get("empty_mask_rule", "")})
    columns = (["model", "trained on", "tested on", "prompt", "seed"] + [CONDITION_LABELS[c] for c in BASE_CONDITIONS]
               + ["text gain"] + [f"kept: {CONDITION_LABELS[c]}" for c in wrong] + ["kept: perturbed attribute"])
    return [_table("Text reliance — Dice (%) with right and wrong prompts; text gain = right − empty; kept = Dice "
                   "with wrong text / Dice with the right text on the same records", columns, body, raw)]


def other_steps(agg: list[dict]) -> list[Table]:
    """Results of steps that no table above lays out (a step added to the study, a result whose step is not
    known): listed as they are, so that every result reaches tables.md."""
    src = [a for a in agg if a["step"] not in LAID_OUT]
    if not src:
        return []
    body = [[a["step"] or "?", a["setting"] or "?", a["model"], a["train_data"].replace(",", " + "),
             a["train_prompt"], a["test_data"], a["prompt"], f"{a['preset']}/{a['freeze']}", fmt(a)] for a in src]
    return [_table("Other results — Dice (%) of the steps no table above lays out",
                   ["step", "setting", "model", "trained on", "train prompt", "tested on", "prompt", "preset/frozen",
                    "Dice (%)"], body, src)]


BUILDERS = (table2, table3, by_prompt, cross_prompt, swap, perturbation, other_steps)  # take the aggregated rows


def parse_sweep(label: str) -> dict:
    """``"batch_size=16 lr=0.001"`` -> ``{"batch_size": "16", "lr": "0.001"}`` (the ``sweep`` column)."""
    return dict(part.split("=", 1) for part in str(label).split() if "=" in part)


def _sort_value(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def search(agg: list[dict]) -> list[Table]:
    """Table 4's hyperparameter search: per model, training data and prompt, one row per combination of swept
    options (the cells of a ``[grid.sweep]``), its test Dice, best first; the best in bold."""
    src = [a for a in agg if a.get("sweep") and a["setting"] == "finetuned" and a["step"] == "test"]
    out = []
    for key, rs in group(src, ("model", "train_data", "test_data", "train_prompt", "preset", "freeze",
                               "size")).items():
        keys = sorted({k for a in rs for k in parse_sweep(a["sweep"])})
        ranked = sorted(rs, key=lambda a: -a["dice_mean"] if a["dice_mean"] == a["dice_mean"] else 1.0)
        body = []
        for i, a in enumerate(ranked):
            values = parse_sweep(a["sweep"])
            dice = fmt(a)
            body.append([str(i + 1)] + [values.get(k, "–") for k in keys] + [f"**{dice}**" if i == 0 else dice])
        m, train, test, prompt, preset, freeze, size = key
        out.append(_table(f"Hyperparameter search (Table 4) — {m} trained on {train.replace(',', ' + ')} with "
                          f"{prompt}, Dice (%) on {test} test, {_setting(preset, freeze, size)}; the swept options "
                          f"change the preset's values", ["rank"] + keys + ["Dice (%)"], body, rs, key))
    return out



def _method(a: dict) -> str:
    """How a run was trained, in words: its PEFT method or frozen encoders, and swept options but the fraction."""
    sweep = {k: v for k, v in parse_sweep(a.get("sweep", "")).items() if k != "train_fraction"}
    freeze = str(a.get("freeze") or "none")
    if "peft" in sweep:
        label = sweep.pop("peft")
    elif freeze.startswith("peft:"):
        label = freeze[5:]
    else:
        label = {"none": "full fine-tuning", "both": "decoder only"}.get(freeze, f"frozen {freeze}")
    return " ".join([label] + [f"{k}={v}" for k, v in sorted(sweep.items())])


def _fmt_boundary(a: dict) -> str:
    dice = "–" if a["dice_mean"] != a["dice_mean"] else f"{100 * a['dice_mean']:.2f}"
    iou = "–" if a["iou_mean"] != a["iou_mean"] else f"{100 * a['iou_mean']:.2f}"
    hd = a.get("hd95_mean", float("nan"))
    hd = "–" if hd != hd else f"{hd:.2f} {a.get('hd95_unit') or 'px'}"
    return f"{dice} / {iou} / {hd}"


def boundary(agg: list[dict]) -> list[Table]:
    """VLSM-Adapter's layout: per training prompt and size, one row per model and way of training (full
    fine-tuning, decoder only, each PEFT method), one column per test set of its training data: Dice / IoU (%) /
    HD95 (mm where every record has a pixel spacing, else px); the whole training set only."""
    src = [a for a in agg if a["setting"] == "finetuned" and a["step"] == "test" and a.get("hd95_unit")
           and "train_fraction" not in parse_sweep(a.get("sweep", ""))]
    out = []
    for key, rs in group(src, ("train_prompt", "preset", "size")).items():
        tests = order({a["test_data"] for a in rs}, datasets_order())
        body = []
        for (model, method), cell in _by_method(rs).items():
            by_test = {a["test_data"]: a for a in cell}
            body.append([model, method] + [_fmt_boundary(by_test[t]) if t in by_test else "–" for t in tests])
        prompt, preset, size = key
        out.append(_table(f"Dice / IoU / HD95 by way of training (VLSM-Adapter's Table 1 layout) — prompt {prompt}, "
                          f"preset {preset or '?'}{', size ' + size if size else ''}",
                          ["model", "training"] + tests, body, rs, ("boundary",) + key))
    return out


def _by_method(rs: list[dict]) -> OrderedDict:
    out: OrderedDict = OrderedDict()
    for a in sorted(rs, key=lambda a: (order([a["model"]], models_order()), _method(a))):
        out.setdefault((a["model"], _method(a)), []).append(a)
    return out


def efficiency(agg: list[dict]) -> list[Table]:
    """Data efficiency: per model, training data and prompt, one row per way of training, one column per
    ``train_fraction`` of a study's sweep (seeded, nested subsets of the training split): test Dice (%)."""
    src = [a for a in agg if a["setting"] == "finetuned" and a["step"] == "test"
           and "train_fraction" in parse_sweep(a.get("sweep", ""))]
    out = []
    for key, rs in group(src, ("model", "train_data", "test_data", "train_prompt", "preset", "size")).items():
        fractions = sorted({parse_sweep(a["sweep"])["train_fraction"] for a in rs}, key=_sort_value)
        body = []
        for (_, method), cell in _by_method(rs).items():
            by_f = {parse_sweep(a["sweep"])["train_fraction"]: a for a in cell}
            body.append([method] + [fmt(by_f.get(f)) for f in fractions])
        model, train, test, prompt, preset, size = key
        out.append(_table(f"Data efficiency — {model} trained on {train.replace(',', ' + ')} with {prompt}, Dice (%) "
                          f"on {test} test against the fraction of the training split",
                          ["training"] + [f"{float(f):.0%}" for f in fractions], body, rs, ("efficiency",) + key))
    return out
