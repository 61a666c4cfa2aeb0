"""Import the paper's released manifests (its exact splits and prompts) for prepared datasets.

Usage::

    python -m datasets.import_manifests --from MEDVLSM_DATA_DIR [NAME ...] [--data-root data]
                                        [--prompts-root prompts_json] [--images-from [NAME=]DIR ...]
                                        [--overwrite] [--dry-run]

``MEDVLSM_DATA_DIR`` is the ``data/`` folder of a checkout of github.com/naamiinepal/medvlsm (MIT licence;
``<paper name>/anns/{train,val,test}.json``), the checkout itself, or a folder of ``<paper name>/{split}.json``.
NAME is one of this project's dataset names (or the paper's folder name, :data:`PAPER_FOLDERS`); default:
every dataset found there.

For each dataset the importer

1. reads ``train.json``, ``val.json``, ``test.json`` with :func:`datasets.manifest.load_manifest` (every key of
   the released records is accepted; a duplicate record is reported with both indices and kept; a test-only
   set's empty ``val.json`` is fine; a file of another shape is an error naming the expected one);
2. maps the paper's names to this project's layout (:func:`paper_names`): CAMUS images live in the paper's
   ``images/train`` (train, val) and ``images/test`` (test) sub-folders, which ``datasets.prepare`` writes too;
   for the test-only sets (ETIS, CVC-ColonDB, CVC-300) the paper's test configs score ``train.json`` and
   ``test.json`` together, so both become this project's ``test.json`` (Table 1: 196 / 380 / 60);
3. checks that every image and mask named exists under ``<data-root>/<name>/{images,masks}`` (the output of
   ``python -m datasets.prepare``, which writes the paper's names), or under ``--images-from DIR``
   (``DIR/images`` + ``DIR/masks``, e.g. ``/work/shared/data/kvasir_seg``; the importer then links
   ``<data-root>/<name>/images`` and ``masks`` to them so ``train.py --data NAME`` finds them);
4. only when every dataset passes, writes ``<prompts-root>/<name>/{train,val,test}.json`` and
   ``provenance.json`` (source paths, sha256 of every source and written file, record counts, duplicates,
   the name mapping).  Anything missing is listed by name (every name) and nothing is written.

Existing manifests that differ are replaced only with ``--overwrite``.  The released manifests must never be
committed to this repository (their images are the datasets' own, under their own terms).
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

from util.errors import run_cli
from util.io import file_sha256, write_json_atomic

from .manifest import ManifestError, ManifestWarning, load_manifest
from .prepare import differing_manifests
from .registry import DATASETS

#: this project's dataset name -> the paper's folder name under medvlsm data/
PAPER_FOLDERS = {"kvasir": "kvasir_polyp", "clinicdb": "clinicdb_polyp", "bkai": "bkai_polyp",
                 "etis": "etis_polyp", "colondb": "colondb_polyp", "cvc300": "cvc300_polyp", "isic": "isic",
                 "dfu": "dfu", "camus": "camus", "busi": "busi", "chexlocalize": "chexlocalize"}
SPLITS = ("train", "val", "test")
#: the paper's per-split image folders (configs/datamodule/*/camus.yaml): names there are relative to them
SPLIT_FOLDERS = {"camus": {"train": "train", "val": "train", "test": "test"}}
SOURCE = "github.com/naamiinepal/medvlsm data/<name>/anns (MIT licence)"


class ImportError_(ValueError):
    """Bad input for the importer; the message names the file, the names missing and the fix."""


def resolve_name(name: str) -> str:
    """This project's dataset name for ``name`` (ours or the paper's folder name)."""
    if name in PAPER_FOLDERS:
        return name
    for ours, theirs in PAPER_FOLDERS.items():
        if name == theirs:
            return ours
    raise ImportError_(f"unknown dataset {name!r}; choose from {', '.join(PAPER_FOLDERS)} (or the paper's folder "
                       f"names {', '.join(PAPER_FOLDERS.values())})")


def source_dir(root: str, name: str) -> str | None:
    """The folder holding ``name``'s split files under ``root`` (``data/<paper>/anns``, ``<paper>/anns``,
    ``<paper>``), or None."""
    paper = PAPER_FOLDERS[name]
    for d in (os.path.join(root, "data", paper, "anns"), os.path.join(root, paper, "anns"), os.path.join(root, paper)):
        if any(os.path.exists(os.path.join(d, f"{s}.json")) for s in SPLITS):
            return d
    return None


def available(root: str) -> list[str]:
    return [n for n in PAPER_FOLDERS if source_dir(root, n)]


def paper_names(name: str, split: str, record: dict) -> dict:
    """The record with the paper's file names mapped to this project's layout (module docstring, step 2)."""
    folder = SPLIT_FOLDERS.get(name, {}).get(split)
    if not folder:
        return record
    return {**record, "img_name": f"{folder}/{record['img_name']}", "mask_name": f"{folder}/{record['mask_name']}"}


def read_sources(name: str, src: str) -> tuple[dict, dict, list[str]]:
    """({split: records}, {split: {path, sha256, records, duplicates}}, notes) of one dataset's release files."""
    records, files, notes = {}, {}, []
    for split in SPLITS:
        path = os.path.join(src, f"{split}.json")
        if not os.path.exists(path):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ManifestWarning)
            recs = load_manifest(path, allow_empty=True)
        dupes = [str(w.message) for w in caught if issubclass(w.category, ManifestWarning)]
        records[split] = recs
        files[split] = {"path": os.path.abspath(path), "sha256": file_sha256(path), "records": len(recs),
                        "duplicates": dupes}
        notes += dupes
    extra = sorted(f for f in os.listdir(src) if f.endswith(".json") and f[:-5] not in SPLITS)
    if extra:
        notes.append(f"not imported (not a train/val/test split): {', '.join(extra)}")
    if not records:
        raise ImportError_(f"{name}: no train.json, val.json or test.json in {src}")
    return records, files, notes


def to_project_splits(name: str, records: dict, notes: list) -> dict:
    """{split: records} in this project's layout: names mapped; test-only sets get train + test as test."""
    info = DATASETS[name]
    mapped = {sp: [paper_names(name, sp, r) for r in recs] for sp, recs in records.items()}
    if info.splits == ("test",):
        pooled = mapped.get("train", []) + mapped.get("test", [])
        counts = {sp: len(mapped.get(sp, [])) for sp in SPLITS}
        notes.append(f"test-only dataset: test.json = the paper's train.json ({counts['train']}) + test.json "
                     f"({counts['test']}), as its test configs score both; val.json ({counts['val']} records) not "
                     f"written")
        return {"test": pooled}
    for sp in SPLITS:
        if sp in info.splits and not mapped.get(sp):
            notes.append(f"{sp}.json is missing or empty: no {sp} split (training needs train and val)")
    return {sp: recs for sp, recs in mapped.items() if recs and sp in info.splits}


def missing_files(name: str, splits: dict, root: str) -> list[str]:
    """Every image and mask the records name that is not under ``root``/{images,masks} (one line each)."""
    out = []
    for sub, key in (("images", "img_name"), ("masks", "mask_name")):
        folder = os.path.join(root, sub)
        names = sorted({r[key] for recs in splits.values() for r in recs})
        if not os.path.isdir(folder):
            out.append(f"{name}: folder {folder} does not exist: all {len(names)} {sub} named by the manifests are "
                       f"missing (prepare the dataset, or pass --images-from)")
            continue
        out += [f"{name}: {sub[:-1]} missing: {os.path.join(folder, n)}" for n in names
                if not os.path.isfile(os.path.join(folder, n))]
    return out


def parse_images_from(values: list[str] | None, names: list[str]) -> dict[str, str]:
    """``--images-from DIR`` (one dataset) or ``NAME=DIR`` (repeatable) -> {name: DIR}."""
    out = {}
    for v in values or []:
        if "=" in v and not os.path.isdir(v):
            n, d = v.split("=", 1)
            out[resolve_name(n)] = d
        elif len(names) == 1:
            out[names[0]] = v
        else:
            raise ImportError_(f"--images-from {v}: with several datasets, say which one: --images-from NAME={v}")
    for n, d in out.items():
        if not all(os.path.isdir(os.path.join(d, sub)) for sub in ("images", "masks")):
            raise ImportError_(f"--images-from {d} ({n}): expected a folder with images/ and masks/ "
                               f"(e.g. /work/shared/data/kvasir_seg, or a prepared data/<name>)")
    return out


def link_folders(name: str, images_from: str, data_root: str, dry_run: bool) -> list[str]:
    """Make ``<data_root>/<name>/{images,masks}`` point at ``images_from``/{images,masks}."""
    done = []
    for sub in ("images", "masks"):
        target, link = os.path.abspath(os.path.join(images_from, sub)), os.path.join(data_root, name, sub)
        if os.path.lexists(link):
            if os.path.realpath(link) != os.path.realpath(target):
                raise ImportError_(f"{link} exists and is not {target}; move it away or use another --data-root")
            continue
        if not dry_run:
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(target, link, target_is_directory=True)
        done.append(f"{link} -> {target}")
    return done


def import_manifests(src_root: str, names: list[str] | None = None, data_root: str = "data",
                     prompts_root: str = "prompts_json", images_from: list[str] | None = None,
                     overwrite: bool = False, dry_run: bool = False, log=print) -> dict:
    """Import (see the module docstring); returns {name: report}.  Raises :class:`ImportError_` (nothing
    written) when a file is missing, a manifest is malformed or an existing manifest differs."""
    if not os.path.isdir(src_root):
        raise ImportError_(f"--from {src_root} is not a folder (pass medvlsm's data/ folder or the checkout)")
    names = [resolve_name(n) for n in names] if names else available(src_root)
    if not names:
        raise ImportError_(f"--from {src_root}: no <paper name>/anns/{{train,val,test}}.json found; expected the data/ "
                           f"folder of github.com/naamiinepal/medvlsm (folders {', '.join(PAPER_FOLDERS.values())})")
    roots = parse_images_from(images_from, names)
    plans, problems = {}, []
    for name in names:
        src = source_dir(src_root, name)
        if src is None:
            problems.append(f"{name}: no {PAPER_FOLDERS[name]}/anns/{{train,val,test}}.json under {src_root}")
            continue
        try:
            records, files, notes = read_sources(name, src)
        except ManifestError as e:
            problems.append(f"{name}: {e}")
            continue
        splits = to_project_splits(name, records, notes)
        root = roots.get(name, os.path.join(data_root, name))
        plans[name] = dict(src=src, files=files, notes=notes, splits=splits, root=root)
    # the released CVC-300 manifests are a copy of CVC-ColonDB's (a known defect of the release)
    for a, b in (("cvc300", "colondb"),):
        if a in plans:
            theirs = plans[b]["files"] if b in plans else read_sources(b, source_dir(src_root, b))[1] \
                if source_dir(src_root, b) else None
            if theirs and {sp: f["sha256"] for sp, f in plans[a]["files"].items()} == \
                    {sp: f["sha256"] for sp, f in theirs.items()}:
                problems.append(f"{a}: the released {PAPER_FOLDERS[a]} manifests are byte-identical to "
                                f"{PAPER_FOLDERS[b]}'s (a known defect of the release: they name ColonDB's 380 images, "
                                f"not CVC-300's 60); evaluate CVC-300 on manifests from python -m datasets.prepare "
                                f"cvc300 instead")
                del plans[a]
    for name, plan in plans.items():
        problems += missing_files(name, plan["splits"], plan["root"])
        out_dir = os.path.join(prompts_root, name)
        changed = [path for _, path, _ in differing_manifests(plan["splits"], out_dir)]
        if changed and not overwrite:
            problems.append(f"{name}: existing manifests differ from the paper's: {', '.join(changed)} (prepared with "
                            f"a seeded split, or prompts from make_prompts.py); pass --overwrite to replace them")
    if problems:
        raise ImportError_(f"nothing written; {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    reports = {}
    for name, plan in plans.items():
        out_dir = os.path.join(prompts_root, name)
        links = link_folders(name, plan["root"], data_root, dry_run) if name in roots else []
        written = {}
        for sp, recs in plan["splits"].items():
            path = os.path.join(out_dir, f"{sp}.json")
            if not dry_run:
                write_json_atomic(path, recs, ensure_ascii=False)
            written[sp] = {"path": os.path.abspath(path), "records": len(recs),
                           "images": len({r["img_name"] for r in recs}),
                           "sha256": file_sha256(path) if not dry_run else None}
        prov = {"source": SOURCE, "from": os.path.abspath(plan["src"]), "dataset": name,
                "paper_folder": PAPER_FOLDERS[name], "files": plan["files"], "written": written,
                "images_from": os.path.abspath(plan["root"]), "links": links,
                "name_mapping": ({sp: f"<name> -> {f}/<name>" for sp, f in SPLIT_FOLDERS[name].items()}
                                 if name in SPLIT_FOLDERS else "identity"),
                "notes": plan["notes"], "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not dry_run:
            write_json_atomic(os.path.join(out_dir, "provenance.json"), prov, ensure_ascii=False)
        reports[name] = prov
        log(report_lines(prov, dry_run))
    return reports


def report_lines(prov: dict, dry_run: bool = False) -> str:
    name = prov["dataset"]
    lines = [f"[{name}] {'would import' if dry_run else 'imported'} {prov['from']}"]
    for sp, f in prov["files"].items():
        lines.append(f"[{name}]   source {sp}.json: {f['records']} records, sha256 {f['sha256'][:16]}...")
    lines.append(f"[{name}]   written: " + ", ".join(f"{sp} {w['records']} records / {w['images']} images"
                                                   for sp, w in prov["written"].items())
                 + f" -> {os.path.dirname(next(iter(prov['written'].values()))['path'])}")
    lines.append(f"[{name}]   every image and mask found under {prov['images_from']}")
    lines += [f"[{name}]   linked {x}" for x in prov["links"]]
    lines += [f"[{name}]   note: {n}" for n in prov["notes"]]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets.import_manifests", description=__doc__.split("\n\n")[0],
                                epilog="Details: docs/datasets.md (the paper's manifests)")
    p.add_argument("names", nargs="*", metavar="NAME", help="datasets to import (default: all found under --from)")
    p.add_argument("--from", dest="src", required=True, metavar="MEDVLSM_DATA_DIR",
                   help="medvlsm's data/ folder (or the checkout, or a folder of <paper name>/{split}.json)")
    p.add_argument("--data-root", default="data", help="prepared images/masks: DATA_ROOT/NAME (default: data)")
    p.add_argument("--prompts-root", default="prompts_json", help="manifests go to PROMPTS_ROOT/NAME")
    p.add_argument("--images-from", action="append", metavar="[NAME=]DIR",
                   help="take images/ and masks/ from DIR instead of DATA_ROOT/NAME (linked there), e.g. "
                        "/work/shared/data/kvasir_seg; NAME=DIR with several datasets")
    p.add_argument("--overwrite", action="store_true", help="replace existing manifests that differ")
    p.add_argument("--dry-run", action="store_true", help="check and report; write nothing")
    return p


def main(args) -> int:
    import_manifests(args.src, args.names, args.data_root, args.prompts_root, args.images_from, args.overwrite,
                     args.dry_run)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
