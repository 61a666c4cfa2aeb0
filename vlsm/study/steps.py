"""The table of steps: one :class:`StepType` record per step, the only place a step is defined.

A record says everything about its step: its one name (in study files, cell step labels, results folders, the
``step`` field of every summary it writes, results.csv and the report), which cells have it and how it expands
into cell steps, how it runs, where it writes and which file marks it done, what ``done.json`` keeps of it, and
how the report reads its results back (see :mod:`vlsm.results.collect`).  Adding a step = one :func:`register`
call here (or in a test) plus its row in docs/studies.md.  A cell runs its steps in the order of this table.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

from datasets.perturb import perturb_records
from datasets.registry import get_dataset, parse_names
from util.io import write_json_atomic

from .cells import Cell, Step, Study, sweep_label


@dataclass
class StepContext:
    """What a step's ``run`` gets: the study, the cell, the device, and the cell's model (loaded once, on the
    first step that asks for it: training never does)."""
    study: Study
    cell: Cell
    device: object
    workers: int = 0
    batch_size: int = 16
    _loaded: object = field(default=None, repr=False)

    def loaded(self):
        """The cell's model as a :class:`vlsm.loading.LoadedModel`: the trained run of a fine-tuning cell, the
        ``[zeroshot]`` weights of a zero-shot cell (refused for CRIS without its checkpoint, as zeroshot.py)."""
        if self._loaded is None:
            from vlsm.loading import load_pretrained, load_trained
            if self.cell.kind == "finetune":
                self._loaded = load_trained(os.path.join(self.study.cell_dir(self.cell), "run"), device=self.device)
            else:
                o = self.cell.options
                self._loaded = load_pretrained(self.cell.model, o.get("weights", "auto"), o.get("size", "base"),
                                               self.device, cris_checkpoint=o.get("cris_checkpoint"),
                                               allow_random_decoder=bool(o.get("allow_random_decoder")),
                                               input_size=o.get("input_size"))
        return self._loaded

    def extra(self, step: Step) -> dict:
        """The fields every summary of this step carries (what results.py reads back)."""
        c = self.cell
        e = {"study": self.study.name, "cell": c.id, "step": step.name,
             "setting": "zeroshot" if c.kind == "zeroshot" else "finetuned", "model": c.model,
             "size": c.options.get("size", ""), "train_data": c.data if c.kind == "finetune" else "",
             "train_prompt": c.prompt, "test_data": step.data, "preset": c.preset, "seed": c.seed, "freeze": c.freeze}
        if c.sweep:
            e["sweep"] = sweep_label(c.sweep)
        if step.attribute:
            e["perturbation"] = {"attribute": step.attribute, "kind": step.kind}
        return {**self.loaded().describe(), **e}

    def score(self, step: Step, out: str, **kw) -> None:
        """``vlsm.scoring.score`` of the cell's model on the step's dataset (test split) and prompt, into ``out``."""
        from vlsm import scoring
        m = self.loaded()
        scoring.score(m.model, step.data, "test", step.prompt, m.threshold, self.device, out=out,
                      data_root=self.study.data_root, prompts_root=self.study.prompts_root,
                      batch_size=self.batch_size, workers=self.workers, extra=self.extra(step), quiet=False, **kw)


def _eval_folder(step: Step) -> str:
    return os.path.join("eval", step.label)


def _summary_result(s: dict) -> dict:
    return {k: s.get(k) for k in ("dice_mean", "dice_std", "iou_mean", "n")}


@dataclass(frozen=True)
class StepType:
    """One step of the table.

    ``expand(grid, cell)`` gives the cell's steps of this type (``grid``: the parsed [[grid]] values, see
    :func:`.spec.parse_grid`).  ``run(ctx, step, out)`` writes the step's results into its folder ``out`` (absent
    when it starts, unless ``resumes``) and its ``marker`` last (or ``skipped.json`` through :func:`skip`).  The
    marker, read back as a JSON object, is what makes the step done; ``result(marker)`` is what ``done.json``
    keeps of it.  ``read(path)`` turns a marker into rows of results.csv; ``None``: the step's rows are the
    ``summary.json`` files it writes (each carrying ``step`` = its name), which the report reads anyway (train
    writes none: its numbers come from ``test``)."""
    name: str
    what: str                                        # one line: what it does
    cells: str                                       # "finetune" | "zeroshot": the cells that have it
    expand: Callable[[dict, Cell], list]
    run: Callable[[StepContext, Step, str], None]
    marker: str = "summary.json"                     # the file in its folder that says it is done
    folder: Callable[[Step], str] = _eval_folder     # its folder, relative to the cell's run (or cell) folder
    result: Callable[[dict], dict] = _summary_result
    read: Callable[[str], list] | None = None
    needs: tuple = ()                                # steps that must run with it (its baseline, its model)
    text: bool = False                               # only for models that read text
    resumes: bool = False                            # its folder is kept after an interruption (train resumes)
    baseline: bool = False                           # the report's reference for relative changes ...
    relative: bool = False                           # ... which it gives for this step's rows


STEPS: dict[str, StepType] = {}
#: the names two steps had in older studies (their folders and summaries are still read, never redone)
LEGACY_NAMES = {"xprompt": "cross_prompt", "perturb": "perturbation"}


def register(step_type: StepType) -> StepType:
    """Add a step to the table (at its end: a cell runs it after the others)."""
    if step_type.name in STEPS:
        raise ValueError(f"a step named {step_type.name!r} exists already")
    if step_type.read and step_type.marker in ("summary.json", "final.json", "text_reliance.json", "skipped.json"):
        raise ValueError(f"step {step_type.name}: a step with its own reader needs its own marker file name")
    STEPS[step_type.name] = step_type
    return step_type


def unregister(name: str) -> None:
    """Remove a step from the table (tests that register a toy step)."""
    STEPS.pop(name, None)


def skip(out: str, reason: str) -> None:
    """Mark a step that does not apply (e.g. no image with two targets to swap): ``skipped.json``."""
    write_json_atomic(os.path.join(out, "skipped.json"), {"skipped": reason})
    print(f"[study]   skipped {os.path.basename(out)}: {reason}", flush=True)


def test_sets(cell: Cell, data_root: str | None = None) -> list[str]:
    """The cell's training datasets that have a test split (``data_root``: where user datasets are registered)."""
    return [d for d in parse_names(cell.data, data_root) if "test" in get_dataset(d, data_root).splits]


def _sets(g: dict, c: Cell) -> list[str]:
    return test_sets(c, g.get("data_root"))


# ----------------------------------------------------------------------------- the steps


def _train(ctx: StepContext, step: Step, out: str) -> None:
    """``run_training`` into ``<cell>/run``, or its resumption from the last finished epoch."""
    from vlsm import training
    cell = ctx.cell
    if os.path.isfile(os.path.join(out, "args.json")) and os.path.isfile(os.path.join(out, "last.pth")):
        print(f"[study]   resuming the interrupted training in {out}", flush=True)
        if os.path.exists(os.path.join(out, "final.json")):  # unreadable (else the step would be done)
            os.remove(os.path.join(out, "final.json"))
        args = training.default_args(resume=out, workers=cell.options.get("workers", 0), device=str(ctx.device))
        if os.path.exists(os.path.join(out, "interrupted.pth")):
            os.remove(os.path.join(out, "interrupted.pth"))
    else:
        if os.path.isdir(out):
            shutil.rmtree(out)  # a start that did not finish its first epoch
        args = training.default_args(**{"workers": 0, **cell.train_kwargs()}, out=out,
                                     output_dir=ctx.study.cell_dir(cell), data_root=ctx.study.data_root,
                                     prompts_root=ctx.study.prompts_root, no_test=True, device=str(ctx.device))
    training.run_training(args)


def _score(ctx: StepContext, step: Step, out: str) -> None:
    ctx.score(step, out)


def _swap(ctx: StepContext, step: Step, out: str) -> None:
    try:
        ctx.score(step, out, swap_prompts=True)
    except ValueError as e:
        if "nothing to swap" not in str(e):
            raise
        shutil.rmtree(out, ignore_errors=True)
        skip(out, f"no {step.data} test image has more than one target")


def perturbed_manifest(study: Study, data: str, attribute: str, kind: str) -> tuple[str | None, str]:
    """(path, note) of the study's perturbed test manifest (made once, seeded); path None when it cannot be made."""
    from datasets.manifest import load_manifest
    from datasets.perturb import perturbable, unmatched
    path = os.path.join(study.root, "manifests", data, f"test__{attribute}__{kind}.json")
    if os.path.isfile(path):
        return path, ""
    records = load_manifest(os.path.join(study.prompts_root, data, "test.json"))
    if not perturbable(records, data):
        return None, (f"{data} records have no attributes and their prompts do not follow the {data} template "
                      f"(run make_prompts.py)")
    new = perturb_records(records, data, attribute, kind, study.seed)
    if not sum(r["perturbation"]["changed"] for r in new):
        return None, f"no {data} record has the attribute {attribute}"
    off = unmatched(new)
    if off:
        print(f"[study]   {data}: {len(off)} of {len(new)} records do not follow the template and stay unperturbed "
              f"in {os.path.basename(path)}: " + ", ".join(n for n, _ in off[:10]), flush=True)
    write_json_atomic(path, new)
    return path, ""


def _perturbation(ctx: StepContext, step: Step, out: str) -> None:
    manifest, note = perturbed_manifest(ctx.study, step.data, step.attribute, step.kind)
    if manifest is None:
        skip(out, note)
    else:
        ctx.score(step, out, manifest=manifest)


def _text_reliance(ctx: StepContext, step: Step, out: str) -> None:
    from vlsm.text_report import text_reliance
    m = ctx.loaded()
    if not getattr(m.model, "uses_text", True):
        skip(out, "the model reads no text")
        return
    extra = {k: v for k, v in ctx.extra(step).items() if k != "step"}
    text_reliance(m.model, step.data, step.prompt, m.threshold, ctx.device, out, data_root=ctx.study.data_root,
                  prompts_root=ctx.study.prompts_root, seed=ctx.study.seed, batch_size=ctx.batch_size,
                  workers=ctx.workers, attributes=step.options.get("attributes", ()),
                  kinds=step.options.get("kinds", ()), extra=extra)


def _zeroshot_prompts(g: dict) -> list[str]:
    prompts = g["zeroshot_prompts"] or list(dict.fromkeys(g["prompts"] + g["cross_prompts"]))
    return [p for p in prompts if p != "random"]


FT = ("train",)  # every evaluation of a fine-tuning cell needs its training

register(StepType(
    "train", "run_training (its test evaluation off: the steps below do it per dataset)", "finetune",
    lambda g, c: [Step("train")], _train, marker="final.json", folder=lambda s: "", resumes=True,
    result=lambda f: {k: f.get(k) for k in ("best_val_dice", "best_epoch", "stopped_by", "threshold")}))
register(StepType(
    "test", "each dataset of the training data, test split, the training prompt (random -> p1)", "finetune",
    lambda g, c: [Step("test", d, c.eval_prompt) for d in _sets(g, c)], _score, needs=FT, baseline=True))
register(StepType(
    "ood", "each ood set that is not a training set", "finetune",
    lambda g, c: [Step("ood", d, c.eval_prompt) for d in g["ood"]
                  if d not in parse_names(c.data, g.get("data_root"))], _score,
    needs=FT, baseline=True))
register(StepType(
    "cross_prompt", "the training datasets with each other prompt", "finetune",
    lambda g, c: [Step("cross_prompt", d, p) for d in _sets(g, c) for p in (g["cross_prompts"] or g["prompts"])
                  if p != c.eval_prompt], _score, needs=FT, text=True, baseline=True))
register(StepType(
    "swap", "each record with the prompt of another target in its image (skipped where no image has two)",
    "finetune", lambda g, c: [Step("swap", d, c.eval_prompt) for d in _sets(g, c)], _swap, needs=FT, text=True,
    relative=True))
register(StepType(
    "perturbation", "one attribute changed per manifest (<root>/manifests/<data>/test__<attr>__<kind>.json)",
    "finetune", lambda g, c: [Step("perturbation", d, c.eval_prompt, a, k) for d in _sets(g, c)
                              for a in g["perturb_attributes"] for k in g["perturb_kinds"]],
    _perturbation, needs=FT + ("test",), text=True, relative=True))
register(StepType(
    "text_reliance", "right / empty / other target / other image / gibberish / perturbed-attribute prompts",
    "finetune", lambda g, c: [Step("text_reliance", d, c.eval_prompt, options={
        "attributes": g["perturb_attributes"], "kinds": g["text_reliance_kinds"]}) for d in _sets(g, c)],
    _text_reliance, marker="text_reliance.json", folder=lambda s: os.path.join("text_reliance", s.data),
    result=lambda r: {"text_gain": r.get("text_gain"), "survival": r.get("survival")}, needs=FT, text=True))
register(StepType(
    "zeroshot", "the [zeroshot] weights on one dataset, one step per prompt", "zeroshot",
    lambda g, c: [Step("zeroshot", c.data, p) for p in _zeroshot_prompts(g)], _score, text=True, baseline=True))
