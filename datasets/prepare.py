"""Turn a downloaded dataset release into ``<data_root>/NAME/{images,masks}`` and manifests.

Usage::

    python -m datasets.prepare NAME --src DOWNLOADED_FOLDER [--data-root data] [--prompts-root prompts_json]
                               [--seed 0] [--overwrite] [--skip-unpaired] [--labels CSV ...]

NAME is one of kvasir, clinicdb, bkai, etis, colondb, cvc300, isic, dfu, camus, busi, chexlocalize.
The layouts each converter accepts are described in ``datasets/converters/*.py`` and ``docs/datasets.md``.

Output
------
* File names are the ones the paper's released manifests use (medvlsm ``data/<name>/anns/*.json``), so
  ``python -m datasets.import_manifests`` can use the paper's splits and prompts on the prepared files.
* ``<data_root>/NAME/images/<stem>.<ext>``: JPEG and PNG images are copied byte for byte; TIFF,
  MHD/raw, NIfTI are written as 8-bit PNG.
* ``<data_root>/NAME/masks/<mask stem>.png``: binary masks, 0 / 255, one channel, the image's size
  (Kvasir-SEG's and BKAI's JPEG masks are copied byte for byte under their own names, as the paper names
  them). Multi-target datasets (CAMUS structures, CheXlocalize pathologies) write one mask per target.
  CAMUS puts each split's files in the paper's sub-folders (``images/train``, ``images/test``).
* ``<prompts_root>/NAME/{train,val,test}.json``: one record per mask::

      {"img_name", "mask_name", "prompts": {"p0": "", "p1": CLASS_NAME}, "bbox": [x1, y1, x2, y2] | null,
       "cat": 1, "segment_id": k, "sentences": [], "class_name": ..., <dataset metadata>}

  ``bbox`` holds the inclusive min/max column and row of the foreground; ``null`` for an empty mask.
  ``p1`` is the class name, so a manifest is usable before ``make_prompts.py`` adds p2..p9.
  Records are sorted by (img_name, segment_id).
* ``<data_root>/NAME/prepare_info.json``: source folder, seed, counts, notes (and, for CVC-ColonDB and
  CVC-300, pixel hashes of the images, used to catch the two being the same files).

Splits
------
Official splits where they exist (ISIC test, CAMUS subgroup lists or its 2019 testing/ folder); test-only
datasets (etis, colondb, cvc300) write only ``test.json``. Everything else is a seeded split of
*groups* (an image; a patient for CAMUS and CheXlocalize) with the paper's counts (``PAPER_COUNTS``;
for CheXlocalize, whose official val and test sets are pooled as in the paper, the paper's *record* counts
``RECORD_COUNTS``: patients are taken in the shuffled order until each split holds its share of records).
Scaling rule when the number of groups ``n`` differs from the paper's total ``T``: every split but
train gets ``round(n * paper_count / T)`` groups, train gets the rest. The groups are sorted, shuffled
with ``random.Random(seed)`` and cut in the order train, val, test, so a rerun with the same seed
gives the same manifests. Existing manifests that differ from the new ones are never replaced
without ``--overwrite``.

Bad input
---------
* unknown layout: an error listing what was expected and the folders/files found;
* an image without a mask or a mask without an image: listed, and an error unless ``--skip-unpaired``
  (then skipped and counted in the summary); nothing is dropped silently;
* every pair is checked once by ``datasets.validate`` (the checks of ``python -m datasets.make_manifest``):
  an image or mask that does not decode (truncated, corrupt, a label map where a binary mask is expected)
  is reported by name and left out, never copied (``rejected`` in the summary and prepare_info.json);
* a mask whose size differs from its image's: an error naming both files (the release is mispaired);
* an empty mask (no foreground): kept, with ``bbox`` null (BUSI normal images are empty by design;
  CheXlocalize absent pathologies give no record, see its converter).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import shutil
import time

import numpy as np
from PIL import Image

from datasets.attributes import bounding_box
from datasets.converters.common import COPY_EXTS, Conversion, PrepareError, Sample, read_array, to_uint8
from datasets.io import BadSampleError, read_mask
from datasets.registry import DATASETS
from datasets.validate import PairError, check_image, check_mask
from util.errors import run_cli
from util.io import write_json_atomic

CONVERTERS = {n: d.converter for n, d in DATASETS.items() if d.converter}

#: Paper's Table 1 counts (train, val, test) for the seeded splits of samples with no official split.
PAPER_COUNTS = {"kvasir": (800, 100, 100), "clinicdb": (490, 61, 61), "bkai": (800, 100, 100),
                "dfu": (1600, 200, 200), "busi": (624, 78, 78),
                "camus": (400, 50, 50)}  # patients: x 12 records = 4800/600/600
#: (train, val) counts for datasets whose official training part is divided into train and val.
TRAINVAL_COUNTS = {"isic": (810, 90)}
#: (train, val, test) *record* counts for datasets split by groups of several records (CheXlocalize: the
#: official val + test pooled and split by patient, as the paper's released manifests: 1279/446/452).
RECORD_COUNTS = {"chexlocalize": (1279, 446, 452)}
#: Expected sizes of the test-only sets (a different number is reported, not refused).
TEST_ONLY = {"etis": 196, "colondb": 380, "cvc300": 60}
#: Datasets whose images must not equal another prepared dataset's (the paper's released CVC-300
#: manifests were a copy of ColonDB's).
MUST_DIFFER = {"cvc300": "colondb", "colondb": "cvc300"}
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------- splits
def scaled_counts(n: int, paper: tuple) -> tuple:
    """Counts for ``n`` groups: the paper's when ``n`` equals their sum, else proportional (module docstring)."""
    total = sum(paper)
    if n == total:
        return tuple(paper)
    rest = [int(round(n * c / total)) for c in paper[1:]]
    return (n - sum(rest), *rest)


def seeded_groups_split(groups: list, counts: tuple, names: tuple, seed: int) -> dict:
    """group -> split name: sorted groups shuffled with ``random.Random(seed)``, cut by ``counts``."""
    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, c in zip(names, counts):
        for g in order[start:start + c]:
            out[g] = name
        start += c
    return out


def seeded_weighted_split(groups: dict, counts: tuple, names: tuple, seed: int) -> dict:
    """group -> split name for ``groups`` {group: number of records}: the sorted groups shuffled with
    ``random.Random(seed)`` and taken in order until each split (but the last) holds its share of the records,
    ``round(total * count / sum(counts))``; a group goes where it leaves the running total nearer the target."""
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    total = sum(groups.values())
    bounds, acc = [], 0
    for c in counts[:-1]:
        acc += c
        bounds.append(round(total * acc / sum(counts)))
    out, running, k = {}, 0, 0
    for g in order:
        while k < len(bounds) and running >= bounds[k]:
            k += 1
        if k < len(bounds) and abs(running + groups[g] - bounds[k]) > abs(running - bounds[k]) and running > 0:
            k += 1   # this group would overshoot the split's share more than stopping short does
        out[g] = names[k]
        running += groups[g]
    return out


def assign_splits(name: str, samples: list, seed: int) -> dict:
    """Split name -> samples (see the module docstring)."""
    out = {s: [] for s in SPLITS}
    free = [s for s in samples if s.split is None]
    trainval = [s for s in samples if s.split == "trainval"]
    for s in samples:
        if s.split in SPLITS:
            out[s.split].append(s)
        elif s.split not in (None, "trainval"):
            raise PrepareError(f"{name}: converter gave unknown split {s.split!r} for {s.source}")
    if free and name in RECORD_COUNTS:
        weights: dict = {}
        for s in free:
            g = s.group or s.stem
            weights[g] = weights.get(g, 0) + len(s.targets)
        assign = seeded_weighted_split(weights, RECORD_COUNTS[name], SPLITS, seed)
        for s in free:
            out[assign[s.group or s.stem]].append(s)
        free = []
    for pool, table, names in ((free, PAPER_COUNTS, SPLITS), (trainval, TRAINVAL_COUNTS, ("train", "val"))):
        if not pool:
            continue
        if name not in table:
            raise PrepareError(f"{name}: {len(pool)} samples have no official split and no paper counts are known")
        groups = [s.group or s.stem for s in pool]
        assign = seeded_groups_split(groups, scaled_counts(len(set(groups)), table[name]), names, seed)
        for s, g in zip(pool, groups):
            out[assign[g]].append(s)
    return out


# ------------------------------------------------------------------------------------------ conversion
def load_converter(name: str):
    if name not in CONVERTERS:
        raise PrepareError(f"unknown dataset '{name}'; choose from: {', '.join(CONVERTERS)}")
    module, func = CONVERTERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def write_image(sample: Sample, out_dir: str, pixels: np.ndarray | None = None) -> tuple[str, tuple[int, int]]:
    """Copy (JPEG/PNG) or convert (anything else -> 8-bit PNG) the sample's image; returns (name, (h, w)).
    ``pixels``: the image already loaded (a loader's array), written as PNG."""
    if pixels is not None:
        arr = pixels
    elif isinstance(sample.image, str):
        ext = os.path.splitext(sample.image)[1]
        if ext.lower() in COPY_EXTS:
            name = sample.stem + ext
            try:
                with Image.open(sample.image) as img:
                    w, h = img.size
            except (OSError, ValueError) as e:
                raise PrepareError(f"cannot read image {sample.image}: {e}") from None
            os.makedirs(os.path.dirname(os.path.join(out_dir, name)), exist_ok=True)
            shutil.copyfile(sample.image, os.path.join(out_dir, name))
            return name, (h, w)
        arr = to_uint8(read_array(sample.image), sample.image)
    else:
        arr = to_uint8(sample.image(), sample.source)
    name = sample.stem + ".png"
    os.makedirs(os.path.dirname(os.path.join(out_dir, name)), exist_ok=True)
    Image.fromarray(arr).save(os.path.join(out_dir, name))
    return name, arr.shape[:2]


def write_mask(mask: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, compress_level=1)


def copy_mask(t, mask: np.ndarray, path: str, notes: list | None) -> None:
    """Copy the release's mask file (``t.copy_from``) as it is; the loader's rule must read the converter's
    mask from it (a difference is reported in ``notes``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(t.copy_from, path)
    try:
        seen = read_mask(path)
    except BadSampleError as e:
        raise PrepareError(f"{t.copy_from}: copied as the mask but the loader cannot read it: {e}") from None
    differ = int((seen != mask).sum())
    if differ and notes is not None:
        notes.append(f"{t.copy_from}: the loader's mask rule differs from the converter's on {differ} pixels")


def checked_sample(s: Sample) -> tuple[np.ndarray | None, list]:
    """Decode and check a sample's image and masks with ``datasets.validate`` (empty masks allowed): returns
    (the loader's pixels or None for a file, [bool masks]); ``PairError`` when unusable."""
    try:
        pixels = None if isinstance(s.image, str) else to_uint8(s.image(), s.source)
    except PrepareError as e:  # the loader's decoding error
        raise PairError(str(e), "image") from None
    _, size = check_image(s.image if pixels is None else pixels, s.source or s.stem)
    masks = []
    for t in s.targets:
        try:
            mask = t.load_mask()
        except PrepareError as e:
            raise PairError(str(e), "mask") from None
        masks.append(check_mask(mask, size, True, t.source or t.mask_stem, s.source or s.stem))
    return pixels, masks


def convert_samples(samples: list, img_dir: str, mask_dir: str, rejected: list | None = None,
                    notes: list | None = None) -> tuple[dict, int]:
    """Write images and masks; returns ({id(sample): [records]}, number of empty masks).  Samples that do not
    decode are left out and listed in ``rejected``; a mask of another size than its image is an error."""
    records, n_empty, mask_names = {}, 0, set()
    for s in samples:
        try:
            pixels, masks = checked_sample(s)
        except PairError as e:
            if e.reason == "size" or rejected is None:
                raise PrepareError(str(e)) from None
            rejected.append(f"{s.source or s.stem}: {e}")
            continue
        img_name, (h, w) = write_image(s, img_dir, pixels)
        recs = []
        for t, mask in zip(s.targets, masks):
            mask_name = t.mask_name
            if mask_name in mask_names:
                raise PrepareError(f"two targets write the same mask name {mask_name} (from {t.source})")
            mask_names.add(mask_name)
            if t.copy_from:
                copy_mask(t, mask, os.path.join(mask_dir, mask_name), notes)
            else:
                write_mask(mask, os.path.join(mask_dir, mask_name))
            bbox = bounding_box(mask)
            n_empty += bbox is None
            meta = dict(t.meta)
            class_name = meta.pop("class_name")
            recs.append({"img_name": img_name, "mask_name": mask_name, "prompts": {"p0": "", "p1": class_name},
                         "bbox": bbox, "cat": 1, "segment_id": t.segment_id, "sentences": [],
                         "class_name": class_name, **meta})
        records[id(s)] = recs
    return records, n_empty


# --------------------------------------------------------------------------------------------- guards
def pixel_hash(path: str) -> str:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            return hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    except (OSError, ValueError, SyntaxError):  # undecodable: rejected (and reported) by convert_samples
        return f"unreadable:{path}"


def prepared_hashes(data_root: str, name: str) -> set | None:
    """Pixel hashes of an already prepared dataset (from prepare_info.json, else from its images)."""
    info = os.path.join(data_root, name, "prepare_info.json")
    if os.path.isfile(info):
        with open(info, encoding="utf-8") as f:
            hashes = json.load(f).get("image_pixel_hashes")
        if hashes:
            return set(hashes)
    img_dir = os.path.join(data_root, name, "images")
    if os.path.isdir(img_dir):
        return {pixel_hash(os.path.join(img_dir, f)) for f in sorted(os.listdir(img_dir)) if not f.startswith(".")}
    return None


def check_distinct(name: str, samples: list, data_root: str) -> list:
    """Refuse CVC-300 sources whose images are ColonDB's (and vice versa); returns this source's hashes."""
    hashes = [pixel_hash(s.image) for s in samples]
    other = MUST_DIFFER.get(name)
    theirs = prepared_hashes(data_root, other) if other else None
    if theirs:
        same = len(set(hashes) & theirs)
        if same and same >= 0.5 * min(len(set(hashes)), len(theirs)):
            raise PrepareError(
                f"{name}: {same} of the {len(hashes)} source images are identical to images of the prepared "
                f"'{other}' dataset in {os.path.join(data_root, other)}. CVC-300 (60 images) and CVC-ColonDB "
                f"(380 images) are different datasets: check that --src is the right folder.")
    return hashes


# ------------------------------------------------------------------------------------------- manifests
def differing_manifests(new: dict, prompts_dir: str) -> list[tuple]:
    """(split, path, old records or None) for each existing manifest that differs from ``new[split]``."""
    out = []
    for split, recs in new.items():
        path = os.path.join(prompts_dir, f"{split}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                try:
                    old = json.load(f)
                except json.JSONDecodeError:
                    old = None
            if old != recs:
                out.append((split, path, old))
    return out


def check_manifests(new: dict, prompts_dir: str, overwrite: bool) -> list:
    """Names of the splits whose existing manifest differs; raises unless ``overwrite``."""
    differ = [f"{path} ({len(old) if isinstance(old, list) else '?'} records now, {len(new[split])} new)"
              for split, path, old in differing_manifests(new, prompts_dir)]
    if differ and not overwrite:
        raise PrepareError("existing manifests differ from the ones this run would write: " + "; ".join(differ) +
                           ". They may hold prompts from make_prompts.py or another seed/source. Pass --overwrite "
                           "to replace them (and the prepared images/masks), or use another --prompts-root.")
    return differ


# ------------------------------------------------------------------------------------------------ main
def prepare(name: str, src: str, data_root: str = "data", prompts_root: str = "prompts_json", seed: int = 0,
            overwrite: bool = False, skip_unpaired: bool = False, log=print, labels: list | None = None) -> dict:
    """Convert ``src`` into the prepared dataset ``name``; returns a summary dict (counts per split, ...).
    ``labels``: CheXpert label CSVs (CheXlocalize only: the "present" pathologies, as the paper)."""
    t0 = time.time()
    if not os.path.isdir(src):
        raise PrepareError(f"--src {src} is not a folder (pass the folder the {name} download was extracted to)")
    if labels and name != "chexlocalize":
        raise PrepareError("--labels (CheXpert label files) is for chexlocalize only")
    conv: Conversion = load_converter(name)(src, labels=labels) if labels else load_converter(name)(src)
    if conv.unpaired:
        shown = "\n  ".join(conv.unpaired[:20]) + (f"\n  ... {len(conv.unpaired) - 20} more"
                                                   if len(conv.unpaired) > 20 else "")
        if not skip_unpaired:
            raise PrepareError(f"{name}: {len(conv.unpaired)} unpaired files:\n  {shown}\n"
                               f"Fix the download, or pass --skip-unpaired to leave them out (they are listed).")
        log(f"[{name}] skipping {len(conv.unpaired)} unpaired files (--skip-unpaired):\n  {shown}")
    if not conv.samples:
        raise PrepareError(f"{name}: no image/mask pairs found in {src}")
    by_split = assign_splits(name, conv.samples, seed)
    if conv.split_folders:  # each split's files in its own sub-folder (CAMUS: the paper's images/train, .../test)
        for split, samples in by_split.items():
            for s in samples:
                s.stem = f"{conv.split_folders[split]}/{s.stem}"
                for t in s.targets:
                    t.mask_stem = f"{conv.split_folders[split]}/{t.mask_stem}"
    stems = {}
    for s in conv.samples:
        if s.stem in stems:
            raise PrepareError(f"{name}: two images map to the output stem '{s.stem}': {stems[s.stem]} and {s.source}")
        stems[s.stem] = s.source
    hashes = check_distinct(name, conv.samples, data_root) if name in MUST_DIFFER else None
    if name in TEST_ONLY and len(conv.samples) != TEST_ONLY[name]:
        conv.notes.append(f"{len(conv.samples)} images; the paper's {name} test set has {TEST_ONLY[name]}")
    splits = ("test",) if name in TEST_ONLY else SPLITS

    out_dir = os.path.join(data_root, name)
    stage = os.path.join(out_dir, f".staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(os.path.join(stage, "images"))
    os.makedirs(os.path.join(stage, "masks"))
    try:
        ordered = sorted(conv.samples, key=lambda s: s.stem)
        rejected: list = []
        recs_of, n_empty = convert_samples(ordered, os.path.join(stage, "images"), os.path.join(stage, "masks"),
                                           rejected, conv.notes)
        if not recs_of:
            raise PrepareError(f"{name}: no usable pair left in {src}; rejected:\n  " + "\n  ".join(rejected))
        by_split = {sp: [s for s in v if id(s) in recs_of] for sp, v in by_split.items()}
        manifests = {}
        for split in splits:
            recs = [r for s in by_split[split] for r in recs_of[id(s)]]
            manifests[split] = sorted(recs, key=lambda r: (r["img_name"], r["segment_id"]))
        empty_splits = [sp for sp, r in manifests.items() if not r]
        manifests = {sp: r for sp, r in manifests.items() if r}
        prompts_dir = os.path.join(prompts_root, name)
        check_manifests(manifests, prompts_dir, overwrite)
        for sub in ("images", "masks"):
            final = os.path.join(out_dir, sub)
            if overwrite and os.path.isdir(final):
                shutil.rmtree(final)
            os.makedirs(final, exist_ok=True)
            for folder, _, files in os.walk(os.path.join(stage, sub)):  # files, so sub-folders may exist already
                rel = os.path.relpath(folder, os.path.join(stage, sub))
                os.makedirs(os.path.join(final, rel), exist_ok=True)
                for f in files:
                    os.replace(os.path.join(folder, f), os.path.join(final, rel, f))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(prompts_dir, exist_ok=True)
    for split, recs in manifests.items():
        write_json_atomic(os.path.join(prompts_dir, f"{split}.json"), recs, ensure_ascii=False)

    summary = {"dataset": name, "src": os.path.abspath(src), "seed": seed,
               "images": {sp: len(by_split[sp]) for sp in splits},
               "records": {sp: len(manifests.get(sp, [])) for sp in splits},
               "empty_masks": n_empty, "skipped_unpaired": len(conv.unpaired), "rejected": rejected,
               "notes": conv.notes,
               "seconds": round(time.time() - t0, 2)}
    info = dict(summary)
    if hashes is not None:
        info["image_pixel_hashes"] = sorted(hashes)
    write_json_atomic(os.path.join(out_dir, "prepare_info.json"), info, ensure_ascii=False)
    log(f"[{name}] {src} -> {out_dir}/{{images,masks}}, {prompts_dir}/{{{','.join(manifests)}}}.json")
    log(f"[{name}] images per split: " + ", ".join(f"{sp} {summary['images'][sp]}" for sp in splits) +
        " | records: " + ", ".join(f"{sp} {summary['records'][sp]}" for sp in splits))
    if name in PAPER_COUNTS or name in TRAINVAL_COUNTS or name in RECORD_COUNTS:
        paper = PAPER_COUNTS.get(name) or TRAINVAL_COUNTS.get(name) or RECORD_COUNTS[name]
        log(f"[{name}] paper counts: {'/'.join(map(str, paper))}"
            f"{' patients' if name == 'camus' else ' records' if name == 'chexlocalize' else ''}")
    log(f"[{name}] empty masks kept with bbox null: {n_empty}; unpaired skipped: {len(conv.unpaired)}; "
        f"{summary['seconds']} s")
    if empty_splits:
        log(f"[{name}] no records for: {', '.join(empty_splits)} (no manifest written)")
    if rejected:
        log(f"[{name}] left out {len(rejected)} pairs that do not decode (not copied):\n  " + "\n  ".join(rejected))
    for note in conv.notes[:20]:
        log(f"[{name}] note: {note}")
    if len(conv.notes) > 20:
        log(f"[{name}] ... {len(conv.notes) - 20} more notes in {out_dir}/prepare_info.json")
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Layouts, splits and download sources: docs/datasets.md")
    p.add_argument("name", choices=sorted(CONVERTERS), help="dataset to prepare")
    p.add_argument("--src", required=True, help="the downloaded (extracted) release folder")
    p.add_argument("--data-root", default="data", help="prepared images/masks go to DATA_ROOT/NAME (default: data)")
    p.add_argument("--prompts-root", default="prompts_json",
                   help="manifests go to PROMPTS_ROOT/NAME (default: prompts_json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing manifests that differ")
    p.add_argument("--skip-unpaired", action="store_true",
                   help="leave out images without masks / masks without images (listed) instead of failing")
    p.add_argument("--labels", action="append", default=None, metavar="CSV",
                   help="chexlocalize: a CheXpert label file (repeat for val and test); the 'present' pathologies "
                        "come from its positive labels, as the paper (default: from the masks)")
    return p


def main(args) -> int:
    prepare(args.name, args.src, args.data_root, args.prompts_root, args.seed, args.overwrite, args.skip_unpaired,
            labels=args.labels)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
