"""The study file: load it (TOML), check it, expand its grids into cells (:func:`load_study`, :func:`expand`),
and pick cells (:func:`select`).  What each step expands into is the step's record in :mod:`.steps`; the
vocabularies (models, presets, freeze settings, perturbation attributes and kinds, train.py's options) are
imported from where they are defined.

A grid takes every training setting from its preset (``models.registry``) unless the study file sets it: its
``freeze`` and ``seeds`` default to the preset's, ``[train]`` / ``[grid.train]`` set options for every cell, and
``[grid.sweep]`` makes any train.py option an axis of the grid (``lr = [1e-4, 1e-3]``), whose values join the
cell id (``...__lr=0.0001``).  An explicit value that changes the preset's is recorded in the cell
(``Cell.overrides``, cell.json) and printed by ``--dry-run``; :func:`resolved_settings` gives every setting a
cell trains with, resolved as ``vlsm.training.resolve_args`` resolves them, without building a model.
"""
from __future__ import annotations

import argparse
import fnmatch
import itertools
import os
import tomllib

from datasets.perturb import DEFAULT_ATTRIBUTES, KINDS, PERTURBABLE
from datasets.registry import get_dataset, parse_names
from vlsm.cli import FREEZE_SETTINGS, preset_names

from .cells import Cell, Study, StudyError, format_value
from .steps import STEPS

# options of a fine-tuning run that the grid sets; a [train] table may not set them
GRID_KEYS = ("model", "data", "prompt", "preset", "seed", "freeze_image_encoder", "freeze_text_encoder", "out",
             "output_dir", "resume", "data_root", "prompts_root", "no_test", "device")
GRID_FIELDS = ("name", "models", "data", "prompts", "presets", "seeds", "freeze", "steps", "ood", "cross_prompts",
               "zeroshot_prompts", "perturb_attributes", "perturb_kinds", "text_reliance_kinds", "train", "sweep")
TRAIN_CRIS_ONLY = ("cris_checkpoint",)  # [train] options that only CRIS cells get (a CLIPSeg cell keeps its hash)
TOP_FIELDS = ("name", "description", "output_dir", "device", "seed", "data", "train", "zeroshot", "grid")
ZEROSHOT_FIELDS = ("size", "weights", "input_size", "cris_checkpoint", "allow_random_decoder", "batch_size",
                   "workers")
CRIS_ONLY = ("cris_checkpoint", "allow_random_decoder")  # [zeroshot] options that only CRIS cells get
SELECT_KEYS = ("model", "data", "prompt", "preset", "seed", "freeze", "kind", "grid")
IN_A_STUDY_FILE = ' (in a study file: cris_checkpoint = "/path/to/cris_best.pth", or allow_random_decoder = true, ' \
                  'in its [zeroshot] table)'


def _list(v, what: str) -> list:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    if not isinstance(v, list):
        raise StudyError(f"{what} must be a value or a list, got {v!r}")
    return list(v)


def _check_names(values, allowed, what):
    bad = [v for v in values if v not in allowed]
    if bad:
        raise StudyError(f"unknown {what} {bad}; choose from {', '.join(map(str, allowed))}")


def _option_check(action: argparse.Action):
    """(what the option takes, in words; a test of one value) for one train.py option."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        return "true or false", lambda v: isinstance(v, bool)
    if action.choices:
        return f"one of {', '.join(map(str, action.choices))}", lambda v: v in action.choices
    if action.type is int:
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if action.type is float:
        return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if action.type is not None:  # e.g. --threshold: a number in [0, 1] or "auto"
        def ok(v, parse=action.type):
            try:
                parse(str(v))
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                return False
            return not isinstance(v, bool)
        return f"a value of {getattr(action.type, '__name__', 'its type')} ({action.help.split(';')[0]})", ok
    return "a string", lambda v: isinstance(v, str)


def train_option_checks() -> dict:
    """train.py's options by attribute name -> (what it takes, test of a value)."""
    from vlsm.cli import train_options
    return {a.dest: _option_check(a) for a in train_options()._actions if a.dest != "help"}


def check_options(options: dict, where: str, table: str) -> None:
    """Refuse an option train.py does not have, one the grid sets, or a value of the wrong type, naming the grid,
    the key and the valid options / the expected type."""
    checks = train_option_checks()
    valid = sorted(k for k in checks if k not in GRID_KEYS)
    for key, value in options.items():
        if key in GRID_KEYS:
            raise StudyError(f"{where}: {table} may not set {key!r}; the grid and the study set it")
        if key not in checks:
            raise StudyError(f"{where}: {table} {key!r} is not a train.py option; valid options: {', '.join(valid)}")
        what, ok = checks[key]
        for v in (value if table.endswith("sweep]") else [value]):
            if not ok(v):
                raise StudyError(f"{where}: {table} {key} = {v!r}: expected {what}")


def parse_sweep(raw, where: str) -> dict:
    """``[grid.sweep]``: train.py option -> the non-empty list of its values (each value checked)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: sweep must be a table of train.py options and value lists, e.g. "
                         f"[grid.sweep] lr = [1e-4, 1e-3]")
    sweep = {}
    for key, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise StudyError(f"{where}: [grid.sweep] {key} has no values")
        sweep[key] = values
    check_options(sweep, where, "[grid.sweep]")
    return sweep


def parse_grid(raw: dict, index: int, data_root: str | None = None) -> dict:
    """A [[grid]] table with its defaults filled in and its names checked (datasets also against ``data_root``'s
    registry of user datasets).  ``seeds`` and ``freeze`` left out are empty: each cell takes its preset's."""
    from models import list_models
    unknown = set(raw) - set(GRID_FIELDS)
    if unknown:
        raise StudyError(f"grid {index}: unknown keys {sorted(unknown)}; known: {', '.join(GRID_FIELDS)}")
    g = {"name": raw.get("name", f"grid{index}"), "train": raw.get("train", {})}
    defaults = {"models": None, "data": None, "prompts": ["p1"], "presets": ["midl"], "seeds": None,
                "freeze": None, "steps": ["train", "test"], "ood": None, "cross_prompts": None,
                "zeroshot_prompts": None, "perturb_attributes": list(DEFAULT_ATTRIBUTES),
                "perturb_kinds": ["random_word", "opposite"], "text_reliance_kinds": ["opposite"]}
    for key, default in defaults.items():
        g[key] = _list(raw.get(key, default), key)
    g["seeds"] = [int(s) for s in g["seeds"]]
    where = f"grid '{g['name']}'"
    g["sweep"] = parse_sweep(raw.get("sweep"), where)
    g["data_root"] = data_root
    if not g["models"] or not g["data"]:
        raise StudyError(f"{where}: needs models and data")
    _check_names(g["models"], list_models(), f"{where} models")
    _check_names(g["steps"], list(STEPS), f"{where} steps")
    _check_names(g["freeze"], list(FREEZE_SETTINGS), f"{where} freeze settings")
    _check_names(g["presets"], list(preset_names()), f"{where} presets")
    _check_names(g["perturb_kinds"], KINDS, f"{where} perturb_kinds")
    _check_names(g["text_reliance_kinds"], KINDS, f"{where} text_reliance_kinds")
    _check_names(g["perturb_attributes"], PERTURBABLE, f"{where} perturb_attributes")
    for d in g["data"] + g["ood"]:
        try:
            parse_names(d, data_root)
        except ValueError as e:
            raise StudyError(f"{where}: {e}") from None
    return g


def _wanted(names) -> list[str]:
    """The grid's steps and every step they need, in the order of the step table."""
    want, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo += STEPS[n].needs
    return [n for n in STEPS if n in want]


def _cell_steps(g: dict, cell: Cell, wanted: list[str], uses_text: bool) -> list:
    types = [STEPS[n] for n in wanted if STEPS[n].cells == cell.kind and (uses_text or not STEPS[n].text)]
    return [s for t in types for s in t.expand(g, cell)]


def _zeroshot_options(zs: dict, train: dict) -> dict:
    unknown = set(zs) - set(ZEROSHOT_FIELDS)
    if unknown:
        raise StudyError(f"[zeroshot]: unknown keys {sorted(unknown)}; known: {', '.join(ZEROSHOT_FIELDS)}")
    size = train.get("size") if train.get("size") not in (None, "auto") else "base"
    return {"weights": zs.get("weights", "auto"), "size": zs.get("size", size),
            **{k: zs[k] for k in ZEROSHOT_FIELDS[2:] if k in zs}}


def _refusal(model: str, opts: dict) -> str:
    """Why a zero-shot cell may not run: CRIS without its checkpoint scores a random decoder
    (``vlsm.loading.load_pretrained`` refuses it with the same message, as zeroshot.py does), and a checkpoint
    named in the study file must be there."""
    from vlsm.loading import refusal
    why = refusal(model, opts.get("cris_checkpoint"), opts.get("allow_random_decoder", False))
    return why + IN_A_STUDY_FILE if why else _train_refusal(model, opts)


def _sweep_points(sweep: dict) -> list[dict]:
    """Every combination of the swept values, keys in sorted order ([{}] without a sweep)."""
    keys = sorted(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def _train_refusal(model: str, options: dict) -> str:
    """Why a fine-tuning cell may not run: a CRIS checkpoint named in the study file that is not there."""
    ckpt = options.get("cris_checkpoint")
    if model == "cris" and ckpt and not os.path.exists(ckpt):
        return (f"cris_checkpoint {ckpt} does not exist: put the RefCOCO-trained CRIS weights there (the paper's "
                f"footnote 1; docs/cris.md) or change the path in the study file")
    return ""


def resolved_settings(cell: Cell) -> tuple[dict, dict]:
    """(every preset setting the cell trains with, the model's preset values) of a fine-tuning cell, resolved by
    ``vlsm.training.resolve_args`` from the cell's options (no model is built, no file read)."""
    from models import get_preset
    from models.registry import PRESET_KEYS
    from vlsm.training import default_args, resolve_args
    args = resolve_args(default_args(**cell.train_kwargs()))
    preset = get_preset(cell.model, cell.preset)
    return dict(args.preset_settings), {k: preset.get(k) for k in PRESET_KEYS}


def _overrides(cell: Cell) -> dict:
    """The explicit settings of a cell that change its preset's: ``{key: {"set": value, "preset": value}}``."""
    try:
        settings, preset = resolved_settings(cell)
    except ValueError as e:
        raise StudyError(f"cell {cell.id}: {e}") from None
    return {k: {"set": v, "preset": preset[k]} for k, v in settings.items() if v != preset[k]}


def _grid_cells(g: dict, train: dict, zs_opts: dict) -> list[Cell]:
    from models import get_preset, get_spec
    from vlsm.cli import freeze_name
    wanted = _wanted(g["steps"])
    made = []
    if any(STEPS[n].cells == "finetune" for n in wanted):
        for model, data, prompt, preset, point in itertools.product(
                g["models"], g["data"], g["prompts"], g["presets"], _sweep_points(g["sweep"])):
            uses_text = get_spec(model).uses_text
            values = get_preset(model, preset)
            freezes = g["freeze"] or [freeze_name(values["freeze_image_encoder"], values["freeze_text_encoder"])]
            options = {k: v for k, v in {**train, **point}.items() if model == "cris" or k not in TRAIN_CRIS_ONLY}
            suffix = "".join(f"__{k}={format_value(v)}" for k, v in point.items())
            for seed, freeze in itertools.product(g["seeds"] or [values["seed"]], freezes):
                if not uses_text and FREEZE_SETTINGS[freeze][1]:
                    continue  # a text-free model has no text encoder to freeze
                cid = f"ft__{model}__{data.replace(',', '+')}__{prompt}__{preset}__s{seed}__{freeze}{suffix}"
                cell = Cell(cid, "finetune", model, data, prompt, preset, seed, freeze, dict(options),
                            grids=[g["name"]], sweep=dict(point), refused=_train_refusal(model, options))
                cell.overrides = _overrides(cell)
                cell.steps = _cell_steps(g, cell, wanted, uses_text)
                made.append(cell)
    if any(STEPS[n].cells == "zeroshot" for n in wanted):
        sets = [d for data in g["data"] for d in parse_names(data, g["data_root"])]
        if "ood" in wanted:
            sets += [d for data in g["ood"] for d in parse_names(data, g["data_root"])]
        for model in g["models"]:
            if not get_spec(model).uses_text:
                continue
            for d in dict.fromkeys(sets):
                if "test" not in get_dataset(d, g["data_root"]).splits:
                    continue
                opts = {k: v for k, v in zs_opts.items() if model == "cris" or k not in CRIS_ONLY}
                cell = Cell(f"zs__{model}__{d}", "zeroshot", model, d, options=opts, grids=[g["name"]],
                            refused=_refusal(model, opts))
                cell.steps = _cell_steps(g, cell, wanted, True)
                made.append(cell)
    return made


def expand(spec: dict, data_root: str | None = None) -> list[Cell]:
    """The cells of a parsed study file, in file order; cells that two grids both make are merged (their steps
    united; their options must agree).  ``data_root``: where user datasets (make_manifest) are registered."""
    from vlsm.training import default_args
    unknown = set(spec) - set(TOP_FIELDS)
    if unknown:
        raise StudyError(f"unknown top-level keys {sorted(unknown)}; known: {', '.join(TOP_FIELDS)}")
    grids = spec.get("grid")
    if isinstance(grids, dict):
        grids = [grids]
    if not grids:
        raise StudyError("a study needs at least one [[grid]] table")
    cells: dict[str, Cell] = {}
    for gi, raw in enumerate(grids):
        g = parse_grid(raw, gi, data_root)
        train = {**spec.get("train", {}), **g["train"]}
        reserved = sorted(set(train) & set(GRID_KEYS))
        if reserved:
            raise StudyError(f"grid '{g['name']}': [train] may not set {reserved}; the grid and the study set them")
        try:
            default_args(**train)
        except ValueError as e:
            raise StudyError(f"grid '{g['name']}': {e}") from None
        check_options(train, f"grid '{g['name']}'", "[train]")
        both = sorted(set(train) & set(g["sweep"]))
        if both:
            raise StudyError(f"grid '{g['name']}': {both} set in [train] and swept in [grid.sweep]; keep one")
        for c in _grid_cells(g, train, _zeroshot_options(dict(spec.get("zeroshot", {})), train)):
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


def _data_table(data: dict) -> list:
    unknown = set(data) - {"data_root", "prompts_root", "prepare"}
    if unknown:
        raise StudyError(f"[data]: unknown keys {sorted(unknown)} (data_root, prompts_root, prepare)")
    prepare = _list(data.get("prepare"), "[[data.prepare]]")
    keys = ("name", "src", "seed", "prompts", "manifests", "images")
    for p in prepare:
        if not isinstance(p, dict) or "name" not in p or not ("src" in p or "manifests" in p):
            raise StudyError(f"each [[data.prepare]] needs name and src (or manifests), got {p!r}")
        extra = set(p) - set(keys)
        if extra:
            raise StudyError(f"[[data.prepare]] {p['name']}: unknown keys {sorted(extra)} ({', '.join(keys)})")
        for k in ("src", "manifests", "images"):
            if k in p:
                p[k] = os.path.abspath(p[k])
    return prepare


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
    prepare = _data_table(data)
    root = output_dir or spec.get("output_dir") or os.path.join("runs", "studies", name)
    data_root = os.path.abspath(data_root or data.get("data_root", "data"))
    return Study(path=os.path.abspath(path), name=name, root=os.path.abspath(root), data_root=data_root,
                 prompts_root=os.path.abspath(prompts_root or data.get("prompts_root", "prompts_json")),
                 device=device or spec.get("device", "auto"), seed=int(spec.get("seed", 0)),
                 prepare=prepare, cells=expand(spec, data_root))


def select(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    """Cells matching every pattern: ``key=v1,v2`` (model, data, prompt, preset, seed, freeze, kind, grid, or a
    swept option such as lr) or a glob on the cell id (a plain word matches anywhere in it)."""
    swept = {k for c in cells for k in c.sweep}
    out = []
    for c in cells:
        ok = True
        for pat in only or []:
            if "=" in pat:
                key, values = pat.split("=", 1)
                values = values.split(",")
                if key not in SELECT_KEYS and key not in swept:
                    known = ", ".join(SELECT_KEYS + tuple(sorted(swept)))
                    raise StudyError(f"--only {pat}: unknown key {key} ({known})")
                if key in SELECT_KEYS:
                    ok &= any(v in c.grids for v in values) if key == "grid" else str(getattr(c, key)) in values
                else:
                    ok &= key in c.sweep and format_value(c.sweep[key]) in values
            else:
                ok &= fnmatch.fnmatch(c.id, pat if any(ch in pat for ch in "*?[") else f"*{pat}*")
        if ok:
            out.append(c)
    return out


def check_refused(cells: list[Cell]) -> None:
    """Refuse to start when a selected cell may not run as its study file gives it, naming the cells."""
    by_reason: dict[str, list[str]] = {}
    for c in cells:
        if c.refused:
            by_reason.setdefault(c.refused, []).append(c.id)
    if by_reason:
        raise StudyError("; ".join(f"{', '.join(ids)}: {why}" for why, ids in by_reason.items())
                         + ". Leave these cells out with --only, or change the study file.")
