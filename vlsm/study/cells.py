"""What a study is made of: the study (:class:`Study`), its cells (:class:`Cell`) and a cell's steps
(:class:`Step`).  Plain records; :mod:`.spec` makes them from a study file, :mod:`.steps` says what each step does.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field


class StudyError(ValueError):
    """A study file or a selection that cannot be run (the scripts print it as one line)."""


def format_value(v) -> str:
    """A swept value in a cell id and a report: 0.0001 -> 1e-04, True -> true, "adamw" -> adamw."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def sweep_label(sweep: dict) -> str:
    """``batch_size=16 lr=0.001``: the swept values of a cell, in key order (the report's ``sweep`` column)."""
    return " ".join(f"{k}={format_value(v)}" for k, v in sorted(sweep.items()))


@dataclass
class Step:
    """One step of one cell: a step of :data:`.steps.STEPS` (``name``) on one dataset with one prompt."""
    name: str                 # the step's one name (train, test, ood, cross_prompt, ...)
    data: str = ""
    prompt: str = ""
    attribute: str = ""       # perturbation: the attribute changed ...
    kind: str = ""            # ... and how (random_word, opposite, drop)
    options: dict = field(default_factory=dict)   # not part of the label (text reliance: what to perturb)

    @property
    def label(self) -> str:
        """The step's id within its cell, also its results folder's name: ``cross_prompt__kvasir__p1``."""
        parts = [self.name, self.data.replace(",", "+"), self.prompt, self.attribute, self.kind]
        return "__".join(p for p in parts if p)


@dataclass
class Cell:
    """A fine-tuning run (model x training data x prompt x preset x seed x freeze setting) with its evaluation
    steps, or a zero-shot model on one dataset with a step per prompt."""
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
    refused: str = ""         # why the cell may not run as the file gives it (e.g. zero-shot CRIS, no checkpoint)
    sweep: dict = field(default_factory=dict)      # the swept training options' values (also in ``options``)
    overrides: dict = field(default_factory=dict)  # option -> {"set", "preset"}: explicit values that change the preset

    @property
    def config_hash(self) -> str:
        """What the cell's numbers depend on (not its steps: adding a step only adds work; not ``sweep`` and
        ``overrides``, which ``options`` and the preset already say)."""
        key = {k: v for k, v in asdict(self).items()
               if k not in ("steps", "grids", "id", "refused", "sweep", "overrides")}
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def train_kwargs(self) -> dict:
        """The training options of a fine-tuning cell, as ``vlsm.training.default_args`` takes them (without the
        study's folders and device): its options, then what the grid sets."""
        from vlsm.cli import FREEZE_SETTINGS
        image, text = FREEZE_SETTINGS[self.freeze]
        return {**self.options, "model": self.model, "data": self.data, "prompt": self.prompt, "preset": self.preset,
                "seed": self.seed, "freeze_image_encoder": image, "freeze_text_encoder": text}

    @property
    def eval_prompt(self) -> str:
        """The prompt the cell's evaluations use: the training prompt ("random" -> p1)."""
        return "p1" if self.prompt == "random" else self.prompt

    def describe(self) -> str:
        if self.kind == "zeroshot":
            return f"zero-shot {self.model} on {self.data}"
        return (f"{self.model} on {self.data} with {self.prompt}, preset {self.preset}, seed {self.seed}, "
                f"frozen {self.freeze}")


@dataclass
class Study:
    """A loaded study file: where everything goes and its cells."""
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
