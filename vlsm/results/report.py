"""The report of a folder of results: ``results.csv`` (one row per result), ``results_mean.csv`` (mean and sample std
over seeds), ``tables.md`` (the tables of :mod:`.tables`, each followed by its metric card; a study's sweep as the
search table of Table 4) and the PNG plots of :mod:`.plots`, all written atomically. Results files that cannot be
read are listed in tables.md, in the returned dict and on stderr, never dropped silently.
"""
from __future__ import annotations

import os
import sys

from util.io import write_atomic

from . import plots as plotting
from . import tables
from .aggregate import MEAN_COLUMNS, aggregate, write_csv
from .collect import COLUMNS, collect


def _unreadable_section(unreadable: list[dict]) -> list[str]:
    if not unreadable:
        return []
    return ([f"## Results that could not be read ({len(unreadable)})", "",
             "These files were found but not counted in the tables above: recompute them (a study reruns the "
             "step when its files cannot be read).", ""]
            + [f"- `{u['path']}`: {u['reason']}" for u in unreadable] + [""])


def write_report(roots, out_dir: str, title: str = "Results", plots: bool = True) -> dict:
    """Collect, aggregate, write ``results.csv``, ``results_mean.csv``, ``tables.md`` and the PNG plots into
    ``out_dir`` (files there are replaced: they are derived from the results).  Returns what was written:
    ``csv``, ``mean_csv``, ``markdown``, ``tables`` (titles), ``plots`` (paths), ``unreadable`` (``{"path",
    "reason"}`` of each results file that could not be read), ``rows`` (the number of results)."""
    roots = [roots] if isinstance(roots, str) else list(roots)
    found = collect(roots)
    for u in found.unreadable:
        print(f"[results] not counted: {u['path']}: {u['reason']}", file=sys.stderr, flush=True)
    if not found.rows and not found.reports and not found.unreadable:
        raise FileNotFoundError(f"no summary.json (results of evaluate.py, train.py, zeroshot.py or a study) "
                                f"under {', '.join(roots)}")
    os.makedirs(out_dir, exist_ok=True)
    agg = aggregate(found.rows)
    written = {"csv": write_csv(found.rows, os.path.join(out_dir, "results.csv"), COLUMNS + ("rel_change_pct",)),
               "mean_csv": write_csv(agg, os.path.join(out_dir, "results_mean.csv"), MEAN_COLUMNS),
               "markdown": os.path.join(out_dir, "tables.md"), "tables": [], "plots": [],
               "unreadable": found.unreadable, "rows": len(found.rows)}
    plain = [a for a in agg if not a.get("sweep")]  # a sweep's cells are a search, not the paper's layouts
    made = ([t for build in tables.BUILDERS for t in build(plain)] + tables.search(agg) + tables.boundary(agg)
            + tables.efficiency(agg) + tables.text_reliance(found.reports))
    lines = [f"# {title}", "", f"{len(found.rows)} results from {', '.join(roots)}; {len(agg)} after averaging over "
             f"seeds; {len(found.unreadable)} files could not be read. Values: Dice (%).", ""]
    for t in made:
        lines += [t.markdown(), ""]
        written["tables"].append(t.title)
    write_atomic(written["markdown"], "\n".join(lines + _unreadable_section(found.unreadable)))
    if plots:
        written["plots"] = _plots(plain, out_dir) + [
            plotting.plot_search(t, os.path.join(out_dir, f"search_{plotting.slug(*t.key)}.png"))
            for t in tables.search(agg)] + [
            plotting.plot_efficiency(t, os.path.join(out_dir, f"efficiency_{plotting.slug(*t.key)}.png"))
            for t in tables.efficiency(agg)]
    return written


def _plots(agg: list[dict], out_dir: str) -> list[str]:
    out = [plotting.plot_by_prompt(t, os.path.join(out_dir, f"dice_by_prompt_{plotting.slug(*t.key)}.png"))
           for t in tables.by_prompt(agg)]
    out += [plotting.plot_ood(t, os.path.join(out_dir, f"ood_heatmap_{plotting.slug(*t.key)}.png"))
            for t in tables.table3(agg)]
    pert = [a for a in agg if a["step"] == "perturbation"]
    if pert:
        out.append(plotting.plot_perturbation(pert, os.path.join(out_dir, "perturbation.png")))
    return out
