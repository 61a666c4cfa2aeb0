"""Run a study: a TOML file names a grid of experiments; every cell runs through the library and is recorded
with a done marker, so an interrupted study resumes where it stopped and a failed cell is retried.

    python study.py studies/smoke.toml                   # run every missing cell here, one at a time; then the report
    python study.py studies/smoke.toml --dry-run         # list the cells and what is already done
    python study.py studies/table4.toml --dry-run --json  # one JSON object per cell, every resolved setting
    python study.py studies/table3.toml --only model=clipseg --only kvasir
    python study.py studies/figure2.toml --gpus 0,1,2,3  # one cell per GPU
    python study.py studies/figure2.toml --executor slurm --partition gpu --time 240 --gpus-per-job 1
    python study.py studies/smoke.toml --report          # only write the tables and plots

Cells (fine-tuning runs with their evaluation steps, or zero-shot model x dataset) live in
<output_dir>/cells/<cell id>/ with cell.json, run/ (the training run and its eval/ results), done.json (finished),
failed.json (the last error; the cell runs again on the next start) and running.json (while a process holds it).
A cell interrupted half-way continues from its first missing step; its training resumes from the last finished
epoch; a marker or summary that cannot be read counts as missing (the restart names it).  A zero-shot CRIS cell
without cris_checkpoint is refused, as zeroshot.py refuses it.  The study file format and the steps are in
docs/studies.md.  The report (results.py) goes to <output_dir>/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from util.errors import run_cli
from vlsm import study as S


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("study.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study file (TOML), e.g. studies/smoke.toml")
    g = p.add_argument_group("what to run")
    g.add_argument("--dry-run", action="store_true", help="print the cells and their state; run nothing")
    g.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per cell (id, model, data, "
                   "prompt, preset, seed, steps, state, every resolved training setting, overrides of the preset)")
    g.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="only cells matching: key=v1,v2 (model, data, prompt, preset, seed, freeze, kind, grid) or a "
                        "glob / word of the cell id; repeat to narrow further")
    g.add_argument("--report", action="store_true", help="only write the report (tables, CSV, plots) of what exists")
    g.add_argument("--no-report", action="store_true", help="do not write the report after a local run")
    g.add_argument("--no-prepare", action="store_true", help="skip the [data] prepare hook")
    g = p.add_argument_group("where (defaults from the study file)")
    g.add_argument("--output-dir", default=None, help="study root (default: the file's output_dir, else "
                   "runs/studies/<name>)")
    g.add_argument("--data-root", default=None, help="prepared images and masks")
    g.add_argument("--prompts-root", default=None, help="manifests")
    g.add_argument("--device", default=None, help="cuda, cpu or auto (default: the file's, else auto)")
    g = p.add_argument_group("executor")
    g.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local", "submitit-debug"],
                   help="local: in this process (or one process per GPU with --gpus); slurm: a submitit job array; "
                        "submitit-local / submitit-debug: submitit's local and in-process executors (tests)")
    g.add_argument("--gpus", default=None, help="local: comma-separated GPU ids, one worker process (one cell at a "
                   "time) per GPU")
    g.add_argument("--partition", default=None, help="slurm partition")
    g.add_argument("--time", type=int, default=240, help="slurm time limit per cell, minutes")
    g.add_argument("--gpus-per-job", type=int, default=1, help="slurm GPUs per job")
    g.add_argument("--cpus-per-job", type=int, default=8, help="slurm CPUs per job")
    g.add_argument("--mem-gb", type=int, default=None, help="slurm memory per job (GB)")
    g.add_argument("--array-parallelism", type=int, default=64, help="slurm: at most this many cells at once")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then write the report")
    return p


def report(study) -> dict:
    from vlsm.results import write_report
    cells_dir = os.path.join(study.root, "cells")
    if not os.path.isdir(cells_dir):
        raise FileNotFoundError(f"{cells_dir} does not exist: run the study first")
    written = write_report(cells_dir, os.path.join(study.root, "results"), title=f"Study {study.name}")
    print(f"[study] report: {written['markdown']} ({len(written['tables'])} tables, {len(written['plots'])} plots), "
          f"{written['csv']}" + (f"; {len(written['unreadable'])} results files could not be read (listed there)"
                                 if written["unreadable"] else ""))
    return written


def main(args) -> list[dict]:
    study = S.load_study(args.study, output_dir=args.output_dir, data_root=args.data_root,
                         prompts_root=args.prompts_root, device=args.device)
    cells = S.select(study.cells, args.only)
    if args.report:
        report(study)
        return []
    if args.dry_run:
        if args.json:
            records = S.plan_records(study, cells)
            for r in records:
                print(json.dumps(r, default=str))
            return records
        print(S.format_plan(study, cells))
        return []
    if not cells:
        raise ValueError(f"no cell of {args.study} matches --only {' '.join(args.only)}")
    S.check_refused(cells)
    states = {c.id: S.cell_status(study, c) for c in cells}
    changed = [c for c in cells if states[c.id]["state"] == "changed"]
    if changed:
        raise ValueError(f"{len(changed)} cells ran with other options than the study file now gives "
                         f"(e.g. {changed[0].id}; see its cell.json): use another --output-dir, or delete those "
                         f"cell folders to run them again")
    todo = [c for c in cells if states[c.id]["state"] != "done"]
    print(f"[study] {study.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run "
          f"-> {study.root}", flush=True)
    if todo and not args.no_prepare:
        S.prepare_data(study)
    S.snapshot(study)
    if not todo:
        results = []
    elif args.executor == "local" and args.gpus:
        results = S.run_gpus(study, todo, [g.strip() for g in args.gpus.split(",") if g.strip()])
    elif args.executor == "local":
        results = S.run_local(study, todo)
    else:
        cluster = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}[args.executor]
        results = S.submit(study, todo, cluster, partition=args.partition, time_min=args.time,
                           gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb,
                           array_parallelism=args.array_parallelism, wait=args.wait)
        if cluster == "slurm" and not args.wait:
            print(f"[study] submitted {len(results)} cells; `python study.py {args.study} --dry-run` shows progress, "
                  f"`--report` writes the tables; resubmitting runs only the cells that are not done")
            return []
    failed = [r for r in results if r.get("state") == "failed"]
    print(f"[study] {len(results)} cells this time: {sum(r.get('state') == 'done' for r in results)} done, "
          f"{len(failed)} failed, {sum(r.get('state') == 'running' for r in results)} running elsewhere", flush=True)
    for r in failed:
        print(f"[study] FAILED {r['cell']}: {r.get('error', '')} (details in its failed.json; it runs again on the "
              f"next start)", file=sys.stderr)
    if not args.no_report and os.path.isdir(os.path.join(study.root, "cells")):
        try:
            report(study)
        except FileNotFoundError as e:
            print(f"[study] no report: {e}")
    if failed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
