"""Running one cell: its missing steps, in the order of the step table, each through its record in
:mod:`.steps`, with the markers of :mod:`.markers`.  What an executor (:mod:`.executors`) calls per cell.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import asdict

from util.io import write_json_atomic

from .cells import Cell, Study, StudyError
from .markers import cell_status, lock, read_marker, step_dir, step_result, unlock
from .spec import load_study
from .steps import STEPS, StepContext


def _run_steps(study: Study, cell: Cell, device: str, attempt: int) -> None:
    from util.runtime import pick_device
    todo = [s for s in cell.steps if step_result(study, cell, s)[0] is None]
    print(f"[study] {cell.id}: {cell.describe()}; {len(todo)} of {len(cell.steps)} steps to run "
          f"(attempt {attempt})", flush=True)
    ctx = StepContext(study, cell, pick_device(device), workers=int(cell.options.get("workers", 0)),
                      batch_size=int(cell.options.get("batch_size") or 16))
    for step in todo:
        record = STEPS[step.name]
        out = step_dir(study, cell, step)
        if not record.resumes and os.path.exists(out):
            shutil.rmtree(out)  # what an interrupted attempt left (no marker): done again
        print(f"[study]   step {step.label}", flush=True)
        record.run(ctx, step, out)
        result, why = step_result(study, cell, step)
        if result is None:
            raise StudyError(f"step {step.label} ended without its marker {os.path.join(out, record.marker)}"
                             + (f": {why[0]}" if why else ""))


def run_cell(study: Study, cell: Cell, device: str | None = None) -> dict:
    """Run the missing steps of one cell; never raises for a failing cell (the failure goes to failed.json and
    the returned status).  KeyboardInterrupt/SystemExit (Ctrl-C, SIGTERM) stop it without marking it failed."""
    d = study.cell_dir(cell)
    os.makedirs(d, exist_ok=True)
    status = cell_status(study, cell)
    if status["state"] in ("done", "changed", "running", "refused"):
        return {"cell": cell.id, **status}
    if not lock(study, cell):
        return {"cell": cell.id, **status, "state": "running"}
    for why in status["ignored"]:
        print(f"[study] {cell.id}: ignoring {why}; what it stood for is done again", flush=True)
    failed = read_marker(os.path.join(d, "failed.json"))[0] or {}
    attempt = int(failed.get("attempts", 0)) + 1
    write_json_atomic(os.path.join(d, "cell.json"), {**asdict(cell), "config_hash": cell.config_hash,
                                                     "study": study.name, "study_file": study.path,
                                                     "data_root": study.data_root, "prompts_root": study.prompts_root})
    t0 = time.time()
    try:
        _run_steps(study, cell, device or study.device, attempt)
        results = {s.label: step_result(study, cell, s)[0] for s in cell.steps}
        marker = {"cell": cell.id, "steps": [s.label for s in cell.steps], "results": results,
                  "seconds": round(time.time() - t0, 1), "attempts": attempt, "host": socket.gethostname(),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(os.path.join(d, "done.json"), marker)
        if os.path.exists(os.path.join(d, "failed.json")):
            os.remove(os.path.join(d, "failed.json"))
        print(f"[study] {cell.id}: done in {time.time() - t0:.0f} s", flush=True)
        return {"cell": cell.id, "state": "done", "seconds": marker["seconds"]}
    except Exception as e:  # a failed cell is recorded and retried on the next start
        from util.errors import clear_message
        msg = f"{type(e).__name__}: {clear_message(e)}".splitlines()[0][:500]
        write_json_atomic(os.path.join(d, "failed.json"), {"error": msg, "traceback": traceback.format_exc(),
                                                           "attempts": attempt, "time": time.time(),
                                                           "host": socket.gethostname()})
        print(f"[study] {cell.id}: FAILED (attempt {attempt}): {msg}", file=sys.stderr, flush=True)
        return {"cell": cell.id, "state": "failed", "error": msg}
    finally:
        unlock(study, cell)


def run_cell_job(study_path: str, cell_id: str, overrides: dict | None = None) -> dict:
    """One cell, from the study file (what a submitit job or a GPU worker process runs)."""
    study = load_study(study_path, **(overrides or {}))
    return run_cell(study, study.cell(cell_id))
