"""PNG plots of the report (matplotlib, Agg), each written atomically: Dice by prompt per dataset and model
(from a :func:`.tables.by_prompt` table), the out-of-distribution matrix as a heat map (from a
:func:`.tables.table3` table), and the relative Dice change under perturbation.
"""
from __future__ import annotations

import io
import math
import re

from datasets.prompt_templates import ALL_PROMPT_KEYS
from util.io import write_atomic

from .tables import Table, datasets_order, group, models_order, order


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def slug(*parts) -> str:
    """A file-name part from a table's key."""
    return "_".join(re.sub(r"[^A-Za-z0-9+.-]+", "-", str(p)) for p in parts if p not in ("", None))


def _save(fig, path: str, **kw) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **kw)
    _plt().close(fig)
    write_atomic(path, buf.getvalue())
    return path


def plot_by_prompt(table: Table, path: str) -> str:
    plt = _plt()
    rs = table.sources
    sets = order([a["test_data"] for a in rs], datasets_order())
    prompts = order([a["prompt"] for a in rs], ALL_PROMPT_KEYS)
    ncol = min(4, len(sets))
    nrow = math.ceil(len(sets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    for ax, d in zip(axes.flat, sets):
        for m in order([a["model"] for a in rs if a["test_data"] == d], models_order()):
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
    fig.suptitle(table.title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_ood(table: Table, path: str) -> str:
    import numpy as np
    plt = _plt()
    rs = table.sources
    models = order([a["model"] for a in rs], models_order())
    trains = order([a["train_data"] for a in rs], datasets_order())
    tests = order([a["test_data"] for a in rs], datasets_order())
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
    fig.suptitle(table.title.split(";")[0], fontsize=9)
    return _save(fig, path, bbox_inches="tight")


def plot_perturbation(rs: list[dict], path: str) -> str:
    """Bars of the relative Dice change per attribute and kind, one panel per run setting."""
    from datasets.perturb import KINDS
    plt = _plt()
    groups = group(rs, ("model", "train_data", "test_data", "prompt", "preset", "freeze"))
    attrs = sorted({a["attribute"] for a in rs})
    kinds = [k for k in KINDS if any(a["kind"] == k for a in rs)]
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
        m, train, test, prompt, _, _ = key
        ax.set_title(f"{m} trained on {train.replace(',', '+')}, tested on {test}, {prompt}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_search(table: Table, path: str) -> str:
    """Table 4's search: Dice against the learning rate (log scale), a line per combination of the other swept
    options (e.g. optimizer, scheduler, batch size); without a swept lr, a bar per combination."""
    from .tables import _sort_value, parse_sweep
    plt = _plt()
    rs = table.sources
    runs = [(parse_sweep(a["sweep"]), 100 * a["dice_mean"]) for a in rs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if any("lr" in v for v, _ in runs):
        lines: dict = {}
        for v, d in runs:
            label = " ".join(f"{k}={x}" for k, x in sorted(v.items()) if k != "lr") or "dice"
            lines.setdefault(label, []).append((float(v.get("lr", "nan")), d))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        if len(lines) <= 24:
            ax.legend(fontsize=6, ncol=2)
    else:
        runs.sort(key=lambda r: tuple(_sort_value(x) for _, x in sorted(r[0].items())))
        ax.bar(range(len(runs)), [d for _, d in runs])
        ax.set_xticks(range(len(runs)), [" ".join(f"{k}={x}" for k, x in sorted(v.items())) for v, _ in runs],
                     rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(table.title.split(";")[0], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)



def plot_efficiency(table: Table, path: str) -> str:
    """Data efficiency: test Dice against the fraction of the training split, a line per way of training."""
    from .tables import _by_method, parse_sweep
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (_, method), cell in _by_method(table.sources).items():
        pts = sorted((float(parse_sweep(a["sweep"])["train_fraction"]), 100 * a["dice_mean"]) for a in cell)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training split")
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(table.title.split(",")[0], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
