"""Studies: a TOML file names a grid of experiments; it expands into *cells* that run through the library
(``run_training``, ``score``, ``text_reliance``), each recorded with a done marker.

A cell is one fine-tuning run (model x training data x prompt x preset x seed x freeze setting) with its
evaluation steps, or one zero-shot model x dataset with a step per prompt.  Its folder
``<study root>/cells/<cell id>/`` holds::

    cell.json      what the cell is (model, data, prompt, ..., training options, steps, config hash)
    run/           the training run folder (args.json, best.pth, ..., eval/<step>/summary.json)
    eval/          zero-shot cells: eval/<step>/summary.json
    running.json   while a process works on it (host, pid, start time)
    failed.json    the last failure (error, traceback, attempts); removed when the cell finishes
    done.json      the cell finished: every step's result (the marker that makes a rerun skip it)

Every step has its own marker too (the results folder's summary.json, ``skipped.json`` for a step that does
not apply, ``run/final.json`` for training, ``text_reliance.json``), so a cell interrupted half-way goes on
from the first missing step, and an interrupted training resumes from its last finished epoch.

Steps of a fine-tuning cell, in order: ``train``; ``test`` (each dataset of the training data, test split, the
training prompt); ``ood`` (each listed out-of-distribution set); ``cross_prompt`` (the training datasets with
other prompts); ``swap`` (prompts of another target in the same image); ``perturbation`` (each attribute x
kind, from the records' attributes); ``text_reliance`` (:mod:`vlsm.text_reliance`).  ``zeroshot`` makes a
zero-shot cell per text-reading model and dataset.  Executors: in-process one cell at a time, one process per
GPU (``gpus``), or submitit (a Slurm job array; ``local``/``debug`` for tests).  See docs/studies.md.
"""
from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import os
import shutil
import socket
import sys
import time
import tomllib
import traceback
from dataclasses import asdict, dataclass, field

from datasets.manifest import load_manifest, write_json_atomic
from datasets.registry import DATASETS, parse_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE_STEPS = ("train", "test", "ood", "cross_prompt", "swap", "perturbation", "text_reliance")
STEPS = FINETUNE_STEPS + ("zeroshot",)
FREEZE = {"none": (False, False), "image": (True, False), "text": (False, True), "both": (True, True)}
# options of a fine-tuning run that the grid sets; a [train] table may not set them
GRID_KEYS = ("model", "data", "prompt", "preset", "seed", "freeze_image_encoder", "freeze_text_encoder", "out",
             "output_dir", "resume", "data_root", "prompts_root", "no_test", "device")
GRID_FIELDS = ("name", "models", "data", "prompts", "presets", "seeds", "freeze", "steps", "ood", "cross_prompts",
               "zeroshot_prompts", "perturb_attributes", "perturb_kinds", "text_reliance_kinds", "train")
TOP_FIELDS = ("name", "description", "output_dir", "device", "seed", "data", "train", "zeroshot", "grid")
STALE_HOURS = 24.0  # a running marker from another host counts as live this long


class StudyError(ValueError):
    pass


# ----------------------------------------------------------------------------- cells


@dataclass
class Step:
    kind: str                 # train, test, ood, xprompt, swap, perturb, text_reliance, zeroshot
    data: str = ""
    prompt: str = ""
    attribute: str = ""
    pkind: str = ""
    options: dict = field(default_factory=dict)   # not part of the label (text reliance: what to perturb)

    @property
    def label(self) -> str:
        parts = [self.kind, self.data.replace(",", "+"), self.prompt, self.attribute, self.pkind]
        return "__".join(p for p in parts if p)


@dataclass
class Cell:
    id: str
    kind: str                 # finetune | zeroshot
    model: str
    data: str                 # training data (finetune) or the evaluated dataset (zeroshot)
    prompt: str = ""          # training prompt (finetune)
    preset: str = ""
    seed: int | None = None
    freeze: str = "none"
    options: dict = field(default_factory=dict)   # train.py options, or the zero-shot model options
    steps: list = field(default_factory=list)
    grids: list = field(default_factory=list)

    @property
    def config_hash(self) -> str:
        """What the cell's numbers depend on (not its steps: adding a step only adds work)."""
        key = {k: v for k, v in asdict(self).items() if k not in ("steps", "grids", "id")}
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def describe(self) -> str:
        if self.kind == "zeroshot":
            return f"zero-shot {self.model} on {self.data}"
        return (f"{self.model} on {self.data} with {self.prompt}, preset {self.preset}, seed {self.seed}, "
                f"frozen {self.freeze}")


def _list(v, what: str) -> list:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    if not isinstance(v, list):
        raise StudyError(f"{what} must be a value or a list, got {v!r}")
    return list(v)


def _finetune_steps(g: dict, data: str, prompt: str, uses_text: bool) -> list[Step]:
    steps = set(g["steps"])
    names = parse_names(data)
    ev = "p1" if prompt == "random" else prompt
    tests = [d for d in names if "test" in DATASETS[d].splits]
    out = [Step("train")]
    if steps & {"test", "perturbation"}:
        out += [Step("test", d, ev) for d in tests]
    if "ood" in steps:
        out += [Step("ood", d, ev) for d in g["ood"] if d not in names]
    if uses_text:
        if "cross_prompt" in steps:
            out += [Step("xprompt", d, p) for d in tests for p in (g["cross_prompts"] or g["prompts"]) if p != ev]
        if "swap" in steps:
            out += [Step("swap", d, ev) for d in tests]
        if "perturbation" in steps:
            out += [Step("perturb", d, ev, a, k) for d in tests for a in g["perturb_attributes"]
                    for k in g["perturb_kinds"]]
        if "text_reliance" in steps:
            opts = {"attributes": g["perturb_attributes"], "kinds": g["text_reliance_kinds"]}
            out += [Step("text_reliance", d, ev, options=opts) for d in tests]
    return out


def _check_names(values, allowed, what):
    bad = [v for v in values if v not in allowed]
    if bad:
        raise StudyError(f"unknown {what} {bad}; choose from {', '.join(allowed)}")


def expand(spec: dict) -> list[Cell]:
    """The cells of a parsed study file, in file order; cells that two grids both make are merged (their steps
    united; their options must agree)."""
    from models import get_spec, list_models

    from .text_reliance import ATTRIBUTES, KINDS
    from .training import default_args
    unknown = set(spec) - set(TOP_FIELDS)
    if unknown:
        raise StudyError(f"unknown top-level keys {sorted(unknown)}; known: {', '.join(TOP_FIELDS)}")
    grids = spec.get("grid")
    if isinstance(grids, dict):
        grids = [grids]
    if not grids:
        raise StudyError("a study needs at least one [[grid]] table")
    base_train = dict(spec.get("train", {}))
    zs = dict(spec.get("zeroshot", {}))
    cells: dict[str, Cell] = {}
    for gi, raw in enumerate(grids):
        unknown = set(raw) - set(GRID_FIELDS)
        if unknown:
            raise StudyError(f"grid {gi}: unknown keys {sorted(unknown)}; known: {', '.join(GRID_FIELDS)}")
        g = {"name": raw.get("name", f"grid{gi}"), "models": _list(raw.get("models"), "models"),
             "data": _list(raw.get("data"), "data"), "prompts": _list(raw.get("prompts", ["p1"]), "prompts"),
             "presets": _list(raw.get("presets", ["midl"]), "presets"),
             "seeds": [int(s) for s in _list(raw.get("seeds", [0]), "seeds")],
             "freeze": _list(raw.get("freeze", ["none"]), "freeze"),
             "steps": _list(raw.get("steps", ["train", "test"]), "steps"),
             "ood": _list(raw.get("ood"), "ood"), "cross_prompts": _list(raw.get("cross_prompts"), "cross_prompts"),
             "zeroshot_prompts": _list(raw.get("zeroshot_prompts"), "zeroshot_prompts"),
             "perturb_attributes": _list(raw.get("perturb_attributes", ["size", "colour", "shape", "location",
                                                                         "number"]), "perturb_attributes"),
             "perturb_kinds": _list(raw.get("perturb_kinds", ["random_word", "opposite"]), "perturb_kinds"),
             "text_reliance_kinds": _list(raw.get("text_reliance_kinds", ["opposite"]), "text_reliance_kinds")}
        where = f"grid '{g['name']}'"
        if not g["models"] or not g["data"]:
            raise StudyError(f"{where}: needs models and data")
        _check_names(g["models"], list_models(), f"{where} models")
        _check_names(g["steps"], STEPS, f"{where} steps")
        _check_names(g["freeze"], list(FREEZE), f"{where} freeze settings")
        from .cli import preset_names
        _check_names(g["presets"], list(preset_names()), f"{where} presets")
        _check_names(g["perturb_kinds"], KINDS, f"{where} perturb_kinds")
        _check_names(g["text_reliance_kinds"], KINDS, f"{where} text_reliance_kinds")
        _check_names(g["perturb_attributes"], ATTRIBUTES + ("view", "cycle", "sex", "age", "image_quality",
                                                            "tumor_type"), f"{where} perturb_attributes")
        for d in g["data"] + g["ood"]:
            try:
                parse_names(d)
            except ValueError as e:
                raise StudyError(f"{where}: {e}") from None
        train = {**base_train, **raw.get("train", {})}
        reserved = sorted(set(train) & set(GRID_KEYS))
        if reserved:
            raise StudyError(f"{where}: [train] may not set {reserved}; the grid and the study set them")
        try:
            default_args(**train)
        except ValueError as e:
            raise StudyError(f"{where}: {e}") from None
        made = []
        if set(g["steps"]) & set(FINETUNE_STEPS):
            for model, data, prompt, preset, seed, freeze in itertools.product(
                    g["models"], g["data"], g["prompts"], g["presets"], g["seeds"], g["freeze"]):
                uses_text = get_spec(model).uses_text
                if freeze in ("text", "both") and not uses_text:
                    continue  # a text-free model has no text encoder to freeze
                cid = f"ft__{model}__{data.replace(',', '+')}__{prompt}__{preset}__s{seed}__{freeze}"
                made.append(Cell(cid, "finetune", model, data, prompt, preset, seed, freeze, dict(train),
                                 _finetune_steps(g, data, prompt, uses_text), [g["name"]]))
        if "zeroshot" in g["steps"]:
            zs_opts = {"weights": zs.get("weights", "auto"),
                       "size": zs.get("size", train.get("size") if train.get("size") not in (None, "auto")
                                      else "base"),
                       **{k: zs[k] for k in ("input_size", "cris_checkpoint", "batch_size", "workers") if k in zs}}
            prompts = g["zeroshot_prompts"] or list(dict.fromkeys(g["prompts"] + g["cross_prompts"]))
            sets = list(dict.fromkeys([d for data in g["data"] for d in parse_names(data)] +
                                      ([d for data in g["ood"] for d in parse_names(data)]
                                       if "ood" in g["steps"] else [])))
            for model in g["models"]:
                if not get_spec(model).uses_text:
                    continue
                for d in sets:
                    if "test" not in DATASETS[d].splits:
                        continue
                    made.append(Cell(f"zs__{model}__{d}", "zeroshot", model, d, options=dict(zs_opts),
                                     steps=[Step("zeroshot", d, p) for p in prompts if p != "random"],
                                     grids=[g["name"]]))
        for c in made:
            old = cells.get(c.id)
            if old is None:
                cells[c.id] = c
                continue
            if old.config_hash != c.config_hash:
                raise StudyError(f"cell {c.id} appears in grids {old.grids} and '{g['name']}' with different "
                                 f"options: {old.options} vs {c.options}")
            labels = {s.label for s in old.steps}
            old.steps += [s for s in c.steps if s.label not in labels]
            old.grids += [n for n in c.grids if n not in old.grids]
    return list(cells.values())


# ----------------------------------------------------------------------------- the study


@dataclass
class Study:
    path: str
    name: str
    root: str
    data_root: str
    prompts_root: str
    device: str
    seed: int
    prepare: list
    cells: list

    @property
    def overrides(self) -> dict:
        """What a worker process or a job needs to load this study exactly as it is here."""
        return {"output_dir": self.root, "data_root": self.data_root, "prompts_root": self.prompts_root,
                "device": self.device}

    def cell_dir(self, cell: Cell) -> str:
        return os.path.join(self.root, "cells", cell.id)

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise StudyError(f"study {self.name} has no cell {cell_id}")


def load_study(path: str, output_dir: str | None = None, data_root: str | None = None,
               prompts_root: str | None = None, device: str | None = None) -> Study:
    """Parse and expand a study file; the keyword arguments override its values.  Relative paths (in the file
    or given) are taken from the current folder and made absolute."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"study file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path} is not valid TOML: {e}") from None
    name = spec.get("name") or os.path.splitext(os.path.basename(path))[0]
    data = spec.get("data", {})
    unknown = set(data) - {"data_root", "prompts_root", "prepare"}
    if unknown:
        raise StudyError(f"[data]: unknown keys {sorted(unknown)} (data_root, prompts_root, prepare)")
    prepare = _list(data.get("prepare"), "[[data.prepare]]")
    for p in prepare:
        if not isinstance(p, dict) or "name" not in p or "src" not in p:
            raise StudyError(f"each [[data.prepare]] needs name and src, got {p!r}")
        extra = set(p) - {"name", "src", "seed", "prompts"}
        if extra:
            raise StudyError(f"[[data.prepare]] {p['name']}: unknown keys {sorted(extra)} (name, src, seed, prompts)")
    overrides = {k: v for k, v in (("output_dir", output_dir), ("data_root", data_root),
                                   ("prompts_root", prompts_root), ("device", device)) if v}
    for p in prepare:
        p["src"] = os.path.abspath(p["src"])
    return Study(path=os.path.abspath(path), name=name,
                 root=os.path.abspath(overrides.get("output_dir") or spec.get("output_dir")
                                      or os.path.join("runs", "studies", name)),
                 data_root=os.path.abspath(overrides.get("data_root") or data.get("data_root", "data")),
                 prompts_root=os.path.abspath(overrides.get("prompts_root")
                                              or data.get("prompts_root", "prompts_json")),
                 device=overrides.get("device") or spec.get("device", "auto"), seed=int(spec.get("seed", 0)),
                 prepare=prepare, cells=expand(spec))


# ----------------------------------------------------------------------------- data preparation


def _prepared(name: str, data_root: str, prompts_root: str) -> bool:
    splits = DATASETS[name].splits
    return (all(os.path.isfile(os.path.join(prompts_root, name, f"{s}.json")) for s in splits)
            and os.path.isdir(os.path.join(data_root, name, "images")))


def add_prompts(name: str, data_root: str, prompts_root: str, log=print) -> int:
    """Attributes and P0..P9 (``make_prompts.py``'s rules, ``datasets.prompt_builder``) for the records of a
    prepared dataset whose manifests lack them.  Returns the number of records updated."""
    from datasets.prompt_builder import process_manifest
    n = 0
    for split in DATASETS[name].splits:
        path = os.path.join(prompts_root, name, f"{split}.json")
        records = load_manifest(path)
        if all(isinstance(r.get("attributes"), dict) for r in records):
            continue
        t0 = time.time()
        out = process_manifest(records, name, data_root, path)
        write_json_atomic(path, out)
        n += len(out)
        log(f"[study] {path}: attributes and prompts P0..P9 for {len(out)} records ({time.time() - t0:.0f} s)")
    return n


def prepare_data(study: Study, log=print) -> None:
    """The [data] prepare hook: convert missing datasets (``datasets.prepare.prepare``), then add prompts."""
    for entry in study.prepare:
        name = entry["name"]
        if name not in DATASETS:
            raise StudyError(f"[[data.prepare]]: unknown dataset {name!r}")
        if not _prepared(name, study.data_root, study.prompts_root):
            from datasets.prepare import prepare
            src = entry["src"]
            if not os.path.isdir(src):
                raise FileNotFoundError(f"[[data.prepare]] {name}: source folder {src} not found")
            log(f"[study] preparing {name} from {src} into {study.data_root}")
            prepare(name, src, study.data_root, study.prompts_root, int(entry.get("seed", 0)), log=log)
        if entry.get("prompts", True):
            add_prompts(name, study.data_root, study.prompts_root, log)


# ----------------------------------------------------------------------------- markers


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _proc_start(pid: int) -> str:
    """The process's start time (clock ticks since boot) where /proc has it: tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(marker: dict | None) -> bool:
    """Whether the process that wrote a running marker still works on the cell."""
    if not marker:
        return False
    if marker.get("host") == socket.gethostname():
        try:
            pid = int(marker["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError):
            return False
        return pid != os.getpid() and _proc_start(pid) == marker.get("start", "")
    return time.time() - marker.get("time", 0) < STALE_HOURS * 3600


def step_dir(study: Study, cell: Cell, step: Step) -> str:
    base = os.path.join(study.cell_dir(cell), "run" if cell.kind == "finetune" else "")
    if step.kind == "train":
        return base
    if step.kind == "text_reliance":
        return os.path.join(base, "text_reliance", step.data)
    return os.path.join(base, "eval", step.label)


def step_done(study: Study, cell: Cell, step: Step) -> bool:
    d = step_dir(study, cell, step)
    marker = {"train": "final.json", "text_reliance": "text_reliance.json"}.get(step.kind, "summary.json")
    return os.path.isfile(os.path.join(d, marker)) or os.path.isfile(os.path.join(d, "skipped.json"))


def cell_status(study: Study, cell: Cell) -> dict:
    """``{"state": done|failed|running|partial|todo, "steps_done", "steps", "error"}``."""
    d = study.cell_dir(cell)
    done = [s.label for s in cell.steps if step_done(study, cell, s)]
    st = {"steps_done": len(done), "steps": len(cell.steps), "error": ""}
    info = _read_json(os.path.join(d, "cell.json"))
    if info and info.get("config_hash") != cell.config_hash:
        return {**st, "state": "changed", "error": "options changed since this cell ran (see cell.json)"}
    marker = _read_json(os.path.join(d, "done.json"))
    if marker and len(done) == len(cell.steps):
        return {**st, "state": "done"}
    if _alive(_read_json(os.path.join(d, "running.json"))):
        return {**st, "state": "running"}
    failed = _read_json(os.path.join(d, "failed.json"))
    if failed:
        return {**st, "state": "failed", "error": failed.get("error", "")}
    return {**st, "state": "partial" if done else "todo"}


def _lock(path: str) -> bool:
    """Create the running marker; False when a live process holds it."""
    info = {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()), "time": time.time(),
            "job": os.environ.get("SLURM_JOB_ID", "")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            marker = _read_json(path)
            try:
                just_made = marker is None and time.time() - os.path.getmtime(path) < 30  # being written now
            except FileNotFoundError:
                continue
            if just_made or _alive(marker):
                return False
            try:
                os.remove(path)  # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True
    return False


# ----------------------------------------------------------------------------- running a cell


def _summary(s: dict) -> dict:
    return {k: s.get(k) for k in ("dice_mean", "dice_std", "iou_mean", "n", "results_dir")}


def _fresh(path: str) -> str:
    """A step's results folder from an interrupted attempt (no marker) is removed before the step runs again."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    return path


def _skip(path: str, reason: str) -> dict:
    os.makedirs(path, exist_ok=True)
    write_json_atomic(os.path.join(path, "skipped.json"), {"skipped": reason})
    print(f"[study]   skipped {os.path.basename(path)}: {reason}", flush=True)
    return {"skipped": reason}


def _train(study: Study, cell: Cell, device: str) -> None:
    from .training import default_args, run_training
    run_dir = os.path.join(study.cell_dir(cell), "run")
    image, text = FREEZE[cell.freeze]
    if os.path.isfile(os.path.join(run_dir, "args.json")) and os.path.isfile(os.path.join(run_dir, "last.pth")):
        print(f"[study]   resuming the interrupted training in {run_dir}", flush=True)
        args = default_args(resume=run_dir, workers=cell.options.get("workers", 0), device=device)
        if os.path.exists(os.path.join(run_dir, "interrupted.pth")):
            os.remove(os.path.join(run_dir, "interrupted.pth"))
    else:
        _fresh(run_dir)
        args = default_args(**{"workers": 0, **cell.options}, model=cell.model, data=cell.data, prompt=cell.prompt,
                            preset=cell.preset, seed=cell.seed, freeze_image_encoder=image,
                            freeze_text_encoder=text, out=run_dir, output_dir=study.cell_dir(cell),
                            data_root=study.data_root, prompts_root=study.prompts_root, no_test=True, device=device)
    run_training(args)


def _perturbed_manifest(study: Study, data: str, attribute: str, kind: str) -> tuple[str | None, str]:
    """(path, note) of the study's perturbed test manifest (made once, seeded); path None when it cannot be made."""
    from .text_reliance import has_attributes, perturb_records
    path = os.path.join(study.root, "manifests", data, f"test__{attribute}__{kind}.json")
    if os.path.isfile(path):
        return path, ""
    records = load_manifest(os.path.join(study.prompts_root, data, "test.json"))
    if data != "synthetic" and not has_attributes(records):
        return None, f"{data} records have no attributes (run make_prompts.py)"
    new = perturb_records(records, data, attribute, kind, study.seed)
    n = sum(r["perturbation"]["changed"] for r in new)
    if not n:
        return None, f"no {data} record has the attribute {attribute}"
    write_json_atomic(path, new)
    return path, ""


def _extra(study: Study, cell: Cell, step: Step) -> dict:
    e = {"study": study.name, "cell": cell.id, "step": step.kind, "setting": "zeroshot" if cell.kind == "zeroshot"
         else "finetuned", "model": cell.model, "size": cell.options.get("size", ""), "train_data": cell.data
         if cell.kind == "finetune" else "", "train_prompt": cell.prompt, "test_data": step.data,
         "preset": cell.preset, "seed": cell.seed, "freeze": cell.freeze}
    if step.attribute:
        e["perturbation"] = {"attribute": step.attribute, "kind": step.pkind}
    return e


def _eval_step(study: Study, cell: Cell, step: Step, model, threshold: float, device, workers: int,
               batch_size: int) -> dict:
    from .scoring import score
    from .text_reliance import text_reliance
    out = _fresh(step_dir(study, cell, step))
    uses_text = getattr(model, "uses_text", True)
    kw = dict(data_root=study.data_root, prompts_root=study.prompts_root, batch_size=batch_size, workers=workers,
              extra=_extra(study, cell, step), quiet=False)
    if step.kind in ("test", "ood", "xprompt", "zeroshot"):
        return _summary(score(model, step.data, "test", step.prompt, threshold, device, out=out, **kw))
    if step.kind == "swap":
        try:
            return _summary(score(model, step.data, "test", step.prompt, threshold, device, out=out,
                                  swap_prompts=True, **kw))
        except ValueError as e:
            if "nothing to swap" not in str(e):
                raise
            shutil.rmtree(out, ignore_errors=True)
            return _skip(out, f"no {step.data} test image has more than one target")
    if step.kind == "perturb":
        manifest, note = _perturbed_manifest(study, step.data, step.attribute, step.pkind)
        if manifest is None:
            return _skip(out, note)
        return _summary(score(model, step.data, "test", step.prompt, threshold, device, out=out, manifest=manifest,
                              **kw))
    if step.kind == "text_reliance":
        if not uses_text:
            return _skip(out, "the model reads no text")
        rep = text_reliance(model, step.data, step.prompt, threshold, device, out, data_root=study.data_root,
                            prompts_root=study.prompts_root, seed=study.seed, batch_size=batch_size, workers=workers,
                            attributes=step.options.get("attributes", ()), kinds=step.options.get("kinds", ()),
                            extra={k: v for k, v in kw["extra"].items() if k != "step"})
        return {"text_gain": rep["text_gain"], "survival": rep["survival"]}
    raise StudyError(f"unknown step {step.kind}")


def run_cell(study: Study, cell: Cell, device: str | None = None) -> dict:
    """Run the missing steps of one cell; never raises for a failing cell (the failure goes to failed.json and
    the returned status).  KeyboardInterrupt/SystemExit (Ctrl-C, SIGTERM) stop it without marking it failed."""
    from models import create_model, model_from_checkpoint, resolve_weights

    from .runtime import pick_device
    device = device or study.device
    d = study.cell_dir(cell)
    os.makedirs(d, exist_ok=True)
    status = cell_status(study, cell)
    if status["state"] in ("done", "changed", "running"):
        return {"cell": cell.id, **status}
    if not _lock(os.path.join(d, "running.json")):
        return {"cell": cell.id, **status, "state": "running"}
    failed = _read_json(os.path.join(d, "failed.json")) or {}
    attempt = failed.get("attempts", 0) + 1
    write_json_atomic(os.path.join(d, "cell.json"), {**asdict(cell), "config_hash": cell.config_hash,
                                                     "study": study.name, "study_file": study.path,
                                                     "data_root": study.data_root, "prompts_root": study.prompts_root})
    t0 = time.time()
    results = {}
    try:
        todo = [s for s in cell.steps if not step_done(study, cell, s)]
        print(f"[study] {cell.id}: {cell.describe()}; {len(todo)} of {len(cell.steps)} steps to run "
              f"(attempt {attempt})", flush=True)
        dev = pick_device(device)
        workers = int(cell.options.get("workers", 0))
        batch_size = int(cell.options.get("eval_batch_size", cell.options.get("batch_size") or 16))
        model = None
        for step in cell.steps:
            if step_done(study, cell, step):
                continue
            print(f"[study]   step {step.label}", flush=True)
            if step.kind == "train":
                _train(study, cell, str(dev))
                continue
            if model is None:
                if cell.kind == "finetune":
                    model, ckpt = model_from_checkpoint(os.path.join(d, "run"), dev)
                    threshold = ckpt.get("threshold", model.default_threshold)
                else:
                    o = cell.options
                    cfg = {k: o[k] for k in ("input_size", "cris_checkpoint") if o.get(k)}
                    model = create_model(cell.model, weights=resolve_weights(cell.model, o.get("weights", "auto"),
                                                                             o.get("size", "base")),
                                         size=o.get("size", "base"), **cfg).to(dev)
                    threshold = model.default_threshold
            results[step.label] = _eval_step(study, cell, step, model, threshold, dev, workers, batch_size)
        marker = {"cell": cell.id, "steps": [s.label for s in cell.steps], "results": results,
                  "seconds": round(time.time() - t0, 1), "attempts": attempt, "host": socket.gethostname(),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(os.path.join(d, "done.json"), marker)
        if os.path.exists(os.path.join(d, "failed.json")):
            os.remove(os.path.join(d, "failed.json"))
        print(f"[study] {cell.id}: done in {time.time() - t0:.0f} s", flush=True)
        return {"cell": cell.id, "state": "done", "seconds": marker["seconds"]}
    except Exception as e:  # a failed cell is recorded and retried on the next start
        from .cli import clear_message
        msg = f"{type(e).__name__}: {clear_message(e)}".splitlines()[0][:500]
        write_json_atomic(os.path.join(d, "failed.json"), {"error": msg, "traceback": traceback.format_exc(),
                                                           "attempts": attempt, "time": time.time(),
                                                           "host": socket.gethostname()})
        print(f"[study] {cell.id}: FAILED (attempt {attempt}): {msg}", file=sys.stderr, flush=True)
        return {"cell": cell.id, "state": "failed", "error": msg}
    finally:
        try:
            os.remove(os.path.join(d, "running.json"))
        except FileNotFoundError:
            pass


def run_cell_job(study_path: str, cell_id: str, overrides: dict | None = None) -> dict:
    """One cell, from the study file (what a submitit job or a GPU worker process runs)."""
    study = load_study(study_path, **(overrides or {}))
    return run_cell(study, study.cell(cell_id))


# ----------------------------------------------------------------------------- selecting and executing


def select(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    """Cells matching every pattern: ``key=v1,v2`` (model, data, prompt, preset, seed, freeze, kind, grid) or a
    glob on the cell id (a plain word matches anywhere in it)."""
    out = []
    for c in cells:
        ok = True
        for pat in only or []:
            if "=" in pat:
                key, values = pat.split("=", 1)
                values = values.split(",")
                if key == "grid":
                    ok &= any(v in c.grids for v in values)
                elif key in ("model", "data", "prompt", "preset", "seed", "freeze", "kind"):
                    ok &= str(getattr(c, key)) in values
                else:
                    raise StudyError(f"--only {pat}: unknown key {key} (model, data, prompt, preset, seed, freeze, "
                                     f"kind, grid)")
            else:
                ok &= fnmatch.fnmatch(c.id, pat if any(ch in pat for ch in "*?[") else f"*{pat}*")
        if ok:
            out.append(c)
    return out


def format_plan(study: Study, cells: list[Cell]) -> str:
    lines = [f"study {study.name}: {len(cells)} cells -> {study.root}",
             f"{'state':<9} {'steps':>7}  cell"]
    counts: dict[str, int] = {}
    for c in cells:
        s = cell_status(study, c)
        counts[s["state"]] = counts.get(s["state"], 0) + 1
        lines.append(f"{s['state']:<9} {s['steps_done']:>3}/{s['steps']:<3}  {c.id}"
                     + (f"  ({s['error']})" if s["error"] else ""))
    lines.append("total: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


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
    :func:`run_cell_job`, which skips a done cell, so resubmitting a study is safe.  Returns the jobs, or their
    results when ``wait`` (always for local and debug)."""
    import submitit
    folder = os.path.join(study.root, "submitit", "%j")
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
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
    os.makedirs(study.root, exist_ok=True)
    dst = os.path.join(study.root, "study.toml")
    if os.path.abspath(dst) != study.path:
        shutil.copyfile(study.path, dst)

