"""Studies: a TOML file names grids of experiments; they expand into *cells* that run through the library
(``run_training``, ``score``, ``text_reliance``), each recorded with done markers, so an interrupted study
resumes where it stopped and a failed cell is retried.  See docs/studies.md.

A cell is one fine-tuning run (model x training data x prompt x preset x seed x freeze setting) with its
evaluation steps, or one zero-shot model on one dataset with a step per prompt.  Its folder
``<study root>/cells/<cell id>/`` holds its markers (:mod:`.markers`), ``run/`` (the training run and its
``eval/<step>/`` results) or, for zero-shot cells, ``eval/<step>/``.

Parts:

- :mod:`.cells`: the records (``Study``, ``Cell``, ``Step``);
- :mod:`.spec`: the study file: load, check, expand into cells, select;
- :mod:`.steps`: the table of steps, one record each (name, expansion, run, folder, marker, what the report
  reads); adding a step is one record there;
- :mod:`.markers`: done / running / failed / cell markers, written atomically; unreadable ones count as absent;
- :mod:`.runner`: one cell's missing steps;
- :mod:`.executors`: here, one process per GPU, submitit; the dry-run plan;
- :mod:`.prepare`: the ``[[data.prepare]]`` hook.
"""
from .cells import Cell, Step, Study, StudyError
from .executors import format_plan, plan_records, run_gpus, run_local, snapshot, submit
from .markers import cell_status, read_marker, step_dir, step_done, step_result
from .prepare import add_prompts, prepare_data
from .runner import run_cell, run_cell_job
from .spec import check_refused, expand, load_study, resolved_settings, select
from .steps import STEPS, StepContext, StepType, register, skip, unregister

__all__ = ["Cell", "Step", "Study", "StudyError", "format_plan", "plan_records", "run_gpus", "run_local",
           "snapshot", "submit", "cell_status", "read_marker", "step_dir", "step_done", "step_result", "add_prompts",
           "prepare_data", "run_cell", "run_cell_job", "check_refused", "expand", "load_study", "resolved_settings",
           "select", "STEPS", "StepContext", "StepType", "register", "skip", "unregister"]
