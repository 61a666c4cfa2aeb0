"""The files that say where a cell stands, in ``<study root>/cells/<cell id>/``::

    cell.json      what the cell is (model, data, prompt, ..., training options, steps, config hash)
    running.json   while a process works on it (host, pid, process start, time)
    failed.json    the last failure (error, traceback, attempts); removed when the cell finishes
    done.json      the cell finished: every step's result (the marker that makes a rerun skip it)

and each step's own marker in its folder (its record's ``marker``, e.g. ``summary.json``, or ``skipped.json``).
Every one is written atomically (``util.io``: temporary file, fsync, rename), so a kill leaves the old file or
the new one.  A marker that exists but cannot be read as a JSON object (cut short by an older version, a disk
error) counts as absent: its step runs again, and the restart names the file it ignored and why.
"""
from __future__ import annotations

import json
import os
import socket
import time

from util.io import write_atomic

from .cells import Cell, Step, Study
from .steps import LEGACY_NAMES, STEPS

STALE_HOURS = 24.0  # a running marker from another host counts as live this long


def read_marker(path: str) -> tuple[dict | None, str]:
    """(content, why): content is None when the file is absent or unusable; ``why`` says why a file that
    exists is ignored ("" otherwise)."""
    if not os.path.exists(path):
        return None, ""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{path} cannot be read as JSON ({type(e).__name__}: {e})"
    if not isinstance(obj, dict):
        return None, f"{path} holds no JSON object"
    return obj, ""


def step_dir(study: Study, cell: Cell, step: Step) -> str:
    """The step's folder: its record's ``folder`` under ``<cell>/run`` (fine-tuning) or ``<cell>`` (zero-shot);
    the folder of an older study under the step's former name (``LEGACY_NAMES``) where only that one exists."""
    base = os.path.join(study.cell_dir(cell), "run") if cell.kind == "finetune" else study.cell_dir(cell)
    d = os.path.join(base, STEPS[step.name].folder(step)).rstrip(os.sep)
    for old, new in LEGACY_NAMES.items():
        legacy = os.path.join(base, "eval", old + step.label[len(new):])
        if step.name == new and not os.path.exists(d) and os.path.isdir(legacy):
            return legacy
    return d


def step_result(study: Study, cell: Cell, step: Step) -> tuple[dict | None, list[str]]:
    """(what done.json keeps of the step, or None when it is not done; the marker files ignored, with why)."""
    record = STEPS[step.name]
    d = step_dir(study, cell, step)
    marker, why = read_marker(os.path.join(d, record.marker))
    if marker is not None:
        return record.result(marker), []
    skipped, why_skipped = read_marker(os.path.join(d, "skipped.json"))
    if skipped is not None:
        return {"skipped": skipped.get("skipped", "")}, []
    return None, [w for w in (why, why_skipped) if w]


def step_done(study: Study, cell: Cell, step: Step) -> bool:
    return step_result(study, cell, step)[0] is not None


def _proc_start(pid: int) -> str:
    """The process's start time (clock ticks since boot) where /proc has it: tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(marker: dict | None) -> bool:
    """Whether the process that wrote a running marker still works on the cell."""
    if not marker:
        return False
    if marker.get("host") == socket.gethostname():
        try:
            pid = int(marker["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return pid != os.getpid() and _proc_start(pid) == marker.get("start", "")
    return time.time() - float(marker.get("time", 0)) < STALE_HOURS * 3600


def cell_status(study: Study, cell: Cell) -> dict:
    """``{"state": done|changed|refused|running|failed|partial|todo, "steps_done", "steps", "error", "ignored"}``;
    ``ignored`` lists the marker files that exist but cannot be read (with why)."""
    d = study.cell_dir(cell)
    done, ignored = 0, []
    for s in cell.steps:
        result, why = step_result(study, cell, s)
        done += result is not None
        ignored += why
    markers = {}
    for name in ("cell.json", "done.json", "running.json", "failed.json"):
        markers[name], why = read_marker(os.path.join(d, name))
        ignored += [why] if why else []
    st = {"steps_done": done, "steps": len(cell.steps), "error": "", "ignored": ignored}
    info = markers["cell.json"]
    if info and info.get("config_hash") != cell.config_hash:
        return {**st, "state": "changed", "error": "options changed since this cell ran (see cell.json)"}
    if cell.refused:
        return {**st, "state": "refused", "error": cell.refused}
    if markers["done.json"] and done == len(cell.steps):
        return {**st, "state": "done"}
    if alive(markers["running.json"]):
        return {**st, "state": "running"}
    if markers["failed.json"]:
        return {**st, "state": "failed", "error": str(markers["failed.json"].get("error", ""))}
    return {**st, "state": "partial" if done else "todo"}


def _create_exclusive(path: str, text: str) -> bool:
    """Create ``path`` holding ``text``, never half-written; False when it exists.  A hard link to a complete
    temporary file; where the file system has no hard links, an exclusive create and one write."""
    tmp = f"{path}.{os.getpid()}.tmp"
    write_atomic(tmp, text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    finally:
        os.remove(tmp)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return True


def lock(study: Study, cell: Cell) -> bool:
    """Create the cell's running marker; False when a live process holds it.  A marker of a process that is
    gone, or one that cannot be read, is taken over (and said so)."""
    path = os.path.join(study.cell_dir(cell), "running.json")
    info = {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()), "time": time.time(),
            "job": os.environ.get("SLURM_JOB_ID", "")}
    for _ in range(2):
        if _create_exclusive(path, json.dumps(info) + "\n"):
            return True
        marker, why = read_marker(path)
        if alive(marker):
            return False
        print(f"[study] {cell.id}: taking over {why or 'the running marker of a process that is gone'}", flush=True)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    return False


def unlock(study: Study, cell: Cell) -> None:
    try:
        os.remove(os.path.join(study.cell_dir(cell), "running.json"))
    except FileNotFoundError:
        pass
