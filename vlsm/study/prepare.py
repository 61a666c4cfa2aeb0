"""The ``[[data.prepare]]`` hook of a study file: convert a dataset whose manifests are missing
(``datasets.prepare.prepare``), then add attributes and P0..P9 (``make_prompts.py``'s rules) where its records
have none; or, with ``manifests``, import the paper's released manifests (``datasets.import_manifests``: its
splits and prompts as they are, images from ``src`` converted or from ``images`` linked), adding nothing.  Runs
in the process that starts the study (before any cell, and before submitting jobs).
"""
from __future__ import annotations

import os
import time

from datasets.manifest import load_manifest
from datasets.registry import DATASETS
from util.io import write_json_atomic

from .cells import Study, StudyError


def _prepared(name: str, data_root: str, prompts_root: str) -> bool:
    splits = DATASETS[name].splits
    return (all(os.path.isfile(os.path.join(prompts_root, name, f"{s}.json")) for s in splits)
            and os.path.isdir(os.path.join(data_root, name, "images")))


def add_prompts(name: str, data_root: str, prompts_root: str, log=print) -> int:
    """Attributes and P0..P9 (``datasets.prompt_builder``) for the records of a prepared dataset whose manifests
    lack them.  Returns the number of records updated."""
    from datasets.perturb import has_attributes
    from datasets.prompt_builder import process_manifest
    n = 0
    for split in DATASETS[name].splits:
        path = os.path.join(prompts_root, name, f"{split}.json")
        records = load_manifest(path)
        if has_attributes(records):
            continue
        t0 = time.time()
        out = process_manifest(records, name, data_root, path)
        write_json_atomic(path, out)
        n += len(out)
        log(f"[study] {path}: attributes and prompts P0..P9 for {len(out)} records ({time.time() - t0:.0f} s)")
    return n


def imported(name: str, prompts_root: str) -> bool:
    """Whether ``name``'s manifests are the paper's, imported by ``datasets.import_manifests``."""
    from util.io import read_json
    prov = read_json(os.path.join(prompts_root, name, "provenance.json"))
    return isinstance(prov, dict) and "paper_folder" in prov


def import_paper_manifests(entry: dict, study: Study, log=print) -> None:
    """``[[data.prepare]]`` with ``manifests``: the paper's released manifests of one dataset, once."""
    from datasets.import_manifests import import_manifests
    name = entry["name"]
    if imported(name, study.prompts_root):
        return
    if entry.get("src") and not os.path.isdir(os.path.join(study.data_root, name, "images")):
        from datasets.prepare import prepare
        prepare(name, entry["src"], study.data_root, study.prompts_root, int(entry.get("seed", 0)), log=log)
    images = [f"{name}={entry['images']}"] if entry.get("images") else None
    log(f"[study] importing the paper's {name} manifests from {entry['manifests']}")
    import_manifests(entry["manifests"], [name], study.data_root, study.prompts_root, images, overwrite=True, log=log)


def prepare_data(study: Study, log=print) -> None:
    """Convert (or import) the study's missing datasets, then add prompts."""
    for entry in study.prepare:
        name = entry["name"]
        if name not in DATASETS:
            raise StudyError(f"[[data.prepare]]: unknown dataset {name!r}")
        if entry.get("manifests"):
            import_paper_manifests(entry, study, log)
            continue
        if not _prepared(name, study.data_root, study.prompts_root):
            from datasets.prepare import prepare
            src = entry["src"]
            if not os.path.isdir(src):
                raise FileNotFoundError(f"[[data.prepare]] {name}: source folder {src} not found")
            log(f"[study] preparing {name} from {src} into {study.data_root}")
            prepare(name, src, study.data_root, study.prompts_root, int(entry.get("seed", 0)), log=log)
        if entry.get("prompts", True):
            add_prompts(name, study.data_root, study.prompts_root, log)
