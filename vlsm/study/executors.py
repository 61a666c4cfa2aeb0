"""Where cells run: here, one after another (:func:`run_local`); one worker process per GPU (:func:`run_gpus`);
or a submitit job array (:func:`submit`: Slurm, or submitit's local and in-process executors for tests).  Each
runs :func:`.runner.run_cell`, which skips a done cell, so running or submitting a study again is safe.  Also
what ``--dry-run`` prints (:func:`format_plan`) and the copy of the study file kept with its results.
"""
from __future__ import annotations

import os
import shutil
import time

from util.io import write_atomic

from .cells import Cell, Study
from .markers import cell_status
from .runner import run_cell, run_cell_job

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project folder


def format_plan(study: Study, cells: list[Cell]) -> str:
    """The cells, their state and how many of their steps are done; unreadable markers and refusals named."""
    lines = [f"study {study.name}: {len(cells)} cells -> {study.root}", f"{'state':<9} {'steps':>7}  cell"]
    counts: dict[str, int] = {}
    refused: dict[str, list[str]] = {}
    for c in cells:
        s = cell_status(study, c)
        counts[s["state"]] = counts.get(s["state"], 0) + 1
        if c.refused:
            refused.setdefault(c.refused, []).append(c.id)
        lines.append(f"{s['state']:<9} {s['steps_done']:>3}/{s['steps']:<3}  {c.id}"
                     + (f"  ({s['error']})" if s["error"] and not c.refused else ""))
        if c.overrides:
            lines.append(f"{'':<9} {'':>7}    changes preset {c.preset}: " + ", ".join(
                f"{k}={v['set']} (preset {v['preset']})" for k, v in c.overrides.items()))
        lines += [f"{'':<9} {'':>7}    ignores {why}" for why in s["ignored"]]
    lines.append("total: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    lines += [f"refused: {', '.join(ids)}: {why}" for why, ids in refused.items()]
    return "\n".join(lines)


def plan_records(study: Study, cells: list[Cell]) -> list[dict]:
    """One JSON object per cell (``study.py --dry-run --json``): id, kind, model, data, prompt, preset, seed,
    freeze, steps, state, and ``settings``: every setting a fine-tuning cell trains with (all the preset's keys,
    resolved as ``vlsm.training.resolve_args`` does, with the cell's other options), or a zero-shot cell's model
    options; ``overrides`` (explicit values that change the preset's), ``sweep`` and ``refused``."""
    from .spec import resolved_settings
    out = []
    for c in cells:
        s = cell_status(study, c)
        settings = {**c.options, **resolved_settings(c)[0]} if c.kind == "finetune" else dict(c.options)
        out.append({"id": c.id, "kind": c.kind, "model": c.model, "data": c.data, "prompt": c.prompt,
                    "preset": c.preset, "seed": c.seed, "freeze": c.freeze, "steps": [st.label for st in c.steps],
                    "state": s["state"], "steps_done": s["steps_done"], "settings": settings,
                    "overrides": c.overrides, "sweep": c.sweep, "refused": c.refused, "grids": c.grids})
    return out


def run_local(study: Study, cells: list[Cell]) -> list[dict]:
    out = []
    for i, c in enumerate(cells):
        print(f"[study] cell {i + 1}/{len(cells)}", flush=True)
        out.append(run_cell(study, c))
    return out


def _gpu_worker_init(gpus) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def run_gpus(study: Study, cells: list[Cell], gpus: list[str]) -> list[dict]:
    """One worker process per GPU (CUDA_VISIBLE_DEVICES set before CUDA starts); each takes the next cell."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("spawn")
    queue = ctx.Manager().Queue()
    for g in gpus:
        queue.put(g)
    out = []
    with ProcessPoolExecutor(max_workers=len(gpus), mp_context=ctx, initializer=_gpu_worker_init,
                             initargs=(queue,)) as pool:
        futures = {pool.submit(run_cell_job, study.path, c.id, study.overrides): c for c in cells}
        for f in as_completed(futures):
            try:
                res = f.result()
            except Exception as e:  # the worker process died (e.g. out of memory)
                res = {"cell": futures[f].id, "state": "failed", "error": f"worker died: {e}"}
            print(f"[study] {res['cell']}: {res['state']}", flush=True)
            out.append(res)
    return out


def submit(study: Study, cells: list[Cell], cluster: str = "slurm", partition: str | None = None,
           time_min: int = 240, gpus_per_job: int = 1, cpus_per_job: int = 8, mem_gb: int | None = None,
           array_parallelism: int = 64, wait: bool = False) -> list:
    """Submit the cells as one submitit job array (``cluster``: slurm, local or debug).  Each job runs
    :func:`.runner.run_cell_job`, which skips a done cell, so resubmitting a study is safe.  Returns the jobs, or
    their results when ``wait`` (always for local and debug)."""
    import submitit
    ex = submitit.AutoExecutor(folder=os.path.join(study.root, "submitit", "%j"), cluster=cluster)
    params = dict(name=f"study-{study.name}", timeout_min=time_min, nodes=1, tasks_per_node=1,
                  cpus_per_task=cpus_per_job, slurm_array_parallelism=array_parallelism)
    if gpus_per_job:
        params["gpus_per_node"] = gpus_per_job
    if mem_gb:
        params["mem_gb"] = mem_gb
    if partition:
        params["slurm_partition"] = partition
    if cluster == "slurm":
        params["slurm_setup"] = [f"cd {ROOT}", f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"]
    ex.update_parameters(**params)
    pypath = os.environ.get("PYTHONPATH", "")
    if ROOT not in pypath.split(os.pathsep):  # local jobs are new processes: they need the project importable
        os.environ["PYTHONPATH"] = ROOT + (os.pathsep + pypath if pypath else "")
    # the jobs read a copy of the study file as it is now (editing it later does not change queued jobs)
    path = os.path.join(study.root, "submitit", f"study-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.toml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(study.path, path)
    jobs = ex.map_array(run_cell_job, [path] * len(cells), [c.id for c in cells], [study.overrides] * len(cells))
    for c, j in zip(cells, jobs):
        print(f"[study] submitted {c.id} as job {j.job_id}", flush=True)
    if wait or cluster in ("local", "debug"):
        return [j.result() for j in jobs]
    return jobs


def snapshot(study: Study) -> None:
    """Keep a copy of the study file in the study root (what ran is kept with what it gave)."""
    dst = os.path.join(study.root, "study.toml")
    if os.path.abspath(dst) != study.path:
        with open(study.path, "rb") as f:
            write_atomic(dst, f.read())
