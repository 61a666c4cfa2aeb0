"""Turn your own folder of images and masks into a registered dataset: ``train.py --data NAME`` then works.

    python -m datasets.make_manifest --images DIR --masks DIR --name mydata [--class-name polyp]
           [--prompts FILE.csv] [--split 80/10/10 --seed 0] [--allow-empty] [--link]
           [--window auto|file|ct-abdomen|...|L/W] [--axis 2] [--frame N] [--empty-slices drop|keep|sample]
           [--data-root data] [--prompts-root prompts_json] [--overwrite] [--dry-run]
    python -m datasets.make_manifest --check --name mydata      # validate an existing dataset, write nothing
    python -m datasets.make_manifest --check prompts_json/mydata

Steps (docs/your_data.md has the walk-through)
----------------------------------------------
1. Pairing by stem.  Images and masks are searched recursively (``.jpg .jpeg .png .tif .tiff .bmp``, and the
   medical files of ``datasets.medical``: ``.dcm .dicom``, DICOM files without an extension, ``.nii .nii.gz
   .mha .mhd .nrrd``; any case); an
   image ``sub/a.jpg`` pairs with the mask ``sub/a.<ext>`` or ``sub/a<suffix>.<ext>`` where the
   suffix is one of :data:`MASK_SUFFIXES` (``_mask``, ``-mask``, ``_seg``, ``_segmentation``, ``_gt``, ...;
   add more with ``--mask-suffix``).  ``--images`` and ``--masks`` may be the same folder when the masks carry
   a suffix.  Names may have subfolders; they are kept.
   Medical files (docs/medical_files.md): a DICOM file or a volume gives one record per frame or slice
   (``--axis``, default 2 = axial, of the RAS+ canonical volume; ``--frame`` picks the frame of 4-D volumes),
   each naming its file and its ``reader`` options (frame or slice/axis, and the ``--window`` resolved to
   numbers) and its ``spacing`` (row, col) in mm (None when the file gives none).  A volume pairs with a mask
   volume of the same shape and affine; a multi-frame DICOM with a DICOM mask of as many frames or a
   multi-page TIFF (a page per frame); a single-frame DICOM with a 2-D mask.  Empty-mask frames/slices:
   ``--empty-slices drop`` (default: as 2-D images without ``--allow-empty``), ``keep``, or ``sample`` (a
   seeded ``--empty-fraction`` of them, default 0.1, per file).  16-bit PNG/TIFF images are rescaled by
   ``--window`` (default ``range``, min..max) and their window is recorded too.  The split keeps together the
   slices of one volume and the files of one DICOM series (SeriesInstanceUID).
2. Validation of every pair, once, by ``datasets.validate`` (the rules of ``datasets.io``, also used by
   ``datasets.prepare``): the image decodes completely, the mask decodes and is binary or binarisable, both
   have the same size, the mask is not empty (unless ``--allow-empty``).
3. Prompts.  Without ``--prompts``: P0..P9 exactly as ``make_prompts.py`` builds them for the paper's
   photographic datasets (number, size, location, shape of the mask; colour of the pixels under it; the class
   name ``--class-name``; P7..P9 add a general description: ``--description``, repeatable, else those of the
   paper's dataset with that class name, else "a region of interest in the image").  With ``--prompts
   FILE.csv``: the CSV's prompts, columns ``image`` and ``prompt`` (-> ``p1``; ``p0`` is the empty prompt) or
   ``image`` and any of ``p0``..``p9``; ``image`` is a file name (with or without extension) or a path
   relative to ``--images``; several rows for one image give a list of prompts (one drawn per training step).
4. Split: the usable images are shuffled with ``random.Random(seed)`` (sorted first) and cut by ``--split``
   (train/val/test shares, e.g. 80/10/10; ``70/30`` = train/val only; the rounding of ``datasets.prepare``,
   and every split asked for gets at least one image when there are enough).
5. Output: the pairs are copied (``--link``: symlinked; the originals must then stay) to
   ``<data_root>/<name>/{images,masks}/<same relative names>``, the manifests written atomically to
   ``<prompts_root>/<name>/{train,val,test}.json`` (records as ``datasets.prepare`` + ``make_prompts.py``
   write them: img_name, mask_name, prompts, bbox, cat, segment_id, sentences, class_name, attributes), the
   report to ``<data_root>/<name>/make_manifest_report.json``, and the dataset is registered in
   ``<data_root>/datasets.json`` (read by ``datasets.registry``), so ``--data NAME --data-root DATA_ROOT``
   works in every script.

Every rejected file is listed with the reason.  The command fails (exit status 2) only when no usable pair is
left, or when the output exists and ``--overwrite`` is not given.  ``--check`` validates the manifests of an
existing dataset (records, files, pairs, images in two splits, registration) and exits 2 if anything is wrong.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from util.errors import run_cli
from util.io import write_json_atomic

from .io import HIGH_DEPTH_MODES, BadSampleError, read_image, read_mask
from .manifest import ManifestError, load_manifest, reader_options
from .medical import (
    WINDOW_HELP,
    MedicalFileError,
    check_window,
    count_images,
    is_dicom,
    is_medical,
    is_volume,
    read_medical,
    rescale_16bit,
    same_grid,
)
from .prompt_builder import attributes_from, default_descriptions, with_prompts
from .prompt_templates import ALL_PROMPT_KEYS
from .registry import ALL_SPLITS, DATASETS, DatasetInfo, get_dataset, user_registry_path
from .validate import PairError, check_pair

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MEDICAL_EXTS = (".dcm", ".dicom", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
EMPTY_SLICES = ("drop", "keep", "sample")
MASK_SUFFIXES = ("_segmentation", "_mask", "-mask", " mask", "_masks", "_seg", "-seg", "_gt", "-gt", "_label",
                 "_labels", "_annotation")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REPORT = "make_manifest_report.json"
DEFAULT_CLASS = "target"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m datasets.make_manifest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Walk-through: docs/your_data.md")
    p.add_argument("--images", help="folder of images (searched recursively)")
    p.add_argument("--masks", help="folder of binary masks (may be --images when masks carry a suffix)")
    p.add_argument("--name", help="dataset name for --data (letters, digits, _ . -; not a built-in name)")
    p.add_argument("--class-name", default=None,
                   help=f"what the masks show, used in the prompts (P1 = the class name); default '{DEFAULT_CLASS}'")
    p.add_argument("--description", action="append", default=None,
                   help="a general description of the class for P7..P9 (repeat for several)")
    p.add_argument("--kind", default="custom", help="imaging modality in words, shown in listings (default custom)")
    p.add_argument("--prompts", default=None, metavar="FILE.csv",
                   help="CSV of prompts: columns image,prompt or image,p0..p9 (replaces the computed P0..P9)")
    p.add_argument("--split", default="80/10/10", help="train/val/test shares (default 80/10/10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--allow-empty", action="store_true", help="keep pairs whose mask is empty (no target)")
    p.add_argument("--mask-suffix", action="append", default=[],
                   help=f"another mask-name suffix (built in: {' '.join(repr(s) for s in MASK_SUFFIXES)})")
    p.add_argument("--link", action="store_true", help="symlink the files instead of copying them")
    g = p.add_argument_group("medical files (DICOM, NIfTI, MetaImage/NRRD, 16-bit PNG/TIFF; docs/medical_files.md)")
    g.add_argument("--window", default=None, help=WINDOW_HELP)
    g.add_argument("--axis", type=int, default=2, choices=(0, 1, 2),
                   help="volumes: the axis of the RAS+ canonical volume to slice along: 2 axial (default), "
                        "1 coronal, 0 sagittal")
    g.add_argument("--frame", type=int, default=None, help="4-D volumes: the frame on the 4th axis (required)")
    g.add_argument("--empty-slices", default="drop", choices=EMPTY_SLICES,
                   help="frames/slices whose mask is empty: drop (default), keep, or sample --empty-fraction of "
                        "them (seeded, per file)")
    g.add_argument("--empty-fraction", type=float, default=0.1,
                   help="with --empty-slices sample: the share of each file's empty slices kept (default 0.1)")
    p.add_argument("--data-root", default="data", help="images/masks go to DATA_ROOT/NAME; registry "
                   "DATA_ROOT/datasets.json (default data)")
    p.add_argument("--prompts-root", default="prompts_json", help="manifests go to PROMPTS_ROOT/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of this name")
    p.add_argument("--dry-run", action="store_true", help="pair, validate and report; write nothing")
    p.add_argument("--check", nargs="?", const="", default=None, metavar="MANIFEST_DIR",
                   help="validate an existing dataset (PROMPTS_ROOT/NAME, or this folder) and write nothing")
    return p


# ----------------------------------------------------------------------------------------------- pairing
def list_files(folder: str, exclude: str | None = None) -> dict[str, list[str]]:
    """relative path without extension (posix) -> [relative paths] of the image files under ``folder``
    (two files when a stem is met twice: ``a.jpg`` and ``a.png``); the folder ``exclude`` is skipped."""
    out: dict = {}
    skip = os.path.realpath(exclude) if exclude else None
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) != skip)
        for f in sorted(files):
            stem, ext = split_name(f)
            if f.startswith(".") or not (ext.lower() in IMAGE_EXTS + MEDICAL_EXTS
                                         or (not ext and is_dicom(os.path.join(root, f)))):
                continue
            rel = os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
            key = rel[: len(rel) - len(ext)]
            out.setdefault(key, []).append(rel)
    return out


def split_name(name: str) -> tuple[str, str]:
    """(stem, extension) with ``.nii.gz`` as one extension; a DICOM file named ``IM0001`` has none."""
    if name.lower().endswith(".nii.gz"):
        return name[:-7], name[-7:]
    stem, ext = os.path.splitext(name)
    return (stem, ext) if ext.lower() in IMAGE_EXTS + MEDICAL_EXTS else (name, "")


def _strip_suffix(key: str, suffixes: tuple) -> str | None:
    low = key.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s.lower()) and len(key) > len(s) and key[-len(s) - 1] != "/":
            return key[: -len(s)]
    return None


def pair_files(images_dir: str, masks_dir: str, suffixes: tuple = MASK_SUFFIXES):
    """Pair images and masks by stem.  Returns (pairs [(image rel, mask rel)], rejected [(file, reason)])."""
    for what, d in (("--images", images_dir), ("--masks", masks_dir)):
        if not d or not os.path.isdir(d):
            raise FileNotFoundError(f"{what} {d!r} is not a folder")
    same = os.path.realpath(images_dir) == os.path.realpath(masks_dir)
    images, masks = list_files(images_dir, exclude=masks_dir), list_files(masks_dir)  # masks/ may be in images/
    if same:  # one folder: masks are the files with a mask suffix
        masks = {k: v for k, v in images.items() if _strip_suffix(k, suffixes) is not None}
        images = {k: v for k, v in images.items() if k not in masks}
        if not masks:
            raise ValueError(f"--images and --masks are the same folder {images_dir} but no file name ends with a "
                             f"mask suffix ({', '.join(suffixes)}); put the masks in their own folder or name them "
                             f"<image stem>_mask.png")
    rejected = []
    ambiguous = {key for key, files in images.items() if len(files) > 1}
    for key in sorted(ambiguous):
        rejected += [(os.path.join(images_dir, f), f"two images with the stem '{key}' ({', '.join(images[key])}): "
                      f"remove or rename one") for f in images.pop(key)]
    mask_for: dict[str, list] = defaultdict(list)
    for key, files in masks.items():
        stripped = _strip_suffix(key, suffixes)
        target = key if (not same and key in images) else stripped
        for f in files:
            if target in images:
                mask_for[target].append(f)
            elif target in ambiguous or key in ambiguous:
                rejected.append((os.path.join(masks_dir, f), "mask of an image whose stem is ambiguous (see the "
                                 "two images listed)"))
            else:
                looked = f"'{key}.*'" + (f" or '{stripped}.*'" if stripped else "")
                rejected.append((os.path.join(masks_dir, f), f"mask without image: no image {looked} in {images_dir}"))
    pairs = []
    for key in sorted(images):
        img = images[key][0]
        found = mask_for.get(key, [])
        if not found:
            shown = ", ".join(repr(x) for x in suffixes[:4])
            rejected.append((os.path.join(images_dir, img), f"image without mask: no mask named '{key}.*' or "
                             f"'{key}<suffix>.*' (suffixes {shown}, ...; --mask-suffix adds one) in {masks_dir}"))
        elif len(found) > 1:
            rejected.append((os.path.join(images_dir, img), f"several masks for this image ({', '.join(found)}): "
                             f"keep one (one record per image and mask)"))
        else:
            pairs.append((img, found[0]))
    return pairs, rejected


# ------------------------------------------------------------------------------------------------ prompts


def read_prompt_csv(path: str) -> tuple[dict, list]:
    """``{image key: {prompt key: str | [str]}}`` from the CSV (see the module docstring), and the CSV's
    image names in order (to report rows that match no image)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise FileNotFoundError(f"--prompts {path} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--prompts {path} is not a readable UTF-8 CSV file: {e}") from None
    if not rows:
        raise ValueError(f"--prompts {path} is empty; it needs a header row: image,prompt or image,p0,...,p9")
    header = [h.strip().lower() for h in rows[0]]
    if "image" not in header:
        raise ValueError(f"--prompts {path}: no 'image' column in the header {rows[0]}; expected image,prompt "
                         f"or image,p0,...,p9")
    if "prompt" in header:
        cols = {"p1": header.index("prompt")}
    else:
        cols = {k: header.index(k) for k in ALL_PROMPT_KEYS if k in header}
        if not cols:
            raise ValueError(f"--prompts {path}: no 'prompt' or 'p0'..'p9' column in the header {rows[0]}")
    img_col = header.index("image")
    table: dict[str, dict] = {}
    names = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"--prompts {path}, line {line}: {len(row)} cells but the header has {len(header)} "
                             f"(quote prompts that contain commas)")
        name = row[img_col].strip()
        if not name:
            raise ValueError(f"--prompts {path}, line {line}: empty 'image' cell")
        names.append((line, name))
        entry = table.setdefault(name, {})
        for key, col in cols.items():
            text = row[col].strip()
            if text:
                entry.setdefault(key, []).append(text)
    return table, names


def csv_prompts(table: dict, img_rel: str) -> dict | None:
    """The CSV's prompts for an image (matched by relative path, path without extension, or file stem)."""
    stem = split_name(img_rel)[0]
    for key in (img_rel, stem, os.path.basename(img_rel), os.path.basename(stem)):
        if key in table:
            out = {"p0": ""}
            for k, texts in table[key].items():
                out[k] = texts[0] if len(texts) == 1 else texts
            return out
    return None


# -------------------------------------------------------------------------------------------------- split
def parse_split(text: str) -> dict[str, float]:
    try:
        shares = [float(x) for x in re.split(r"[/,:]", text.strip())]
    except ValueError:
        shares = []
    if not 1 <= len(shares) <= 3 or any(s < 0 for s in shares) or not sum(shares) > 0:
        raise ValueError(f"--split {text!r}: give train/val/test shares such as 80/10/10 (or 70/30, 0/0/100)")
    return {sp: s for sp, s in zip(ALL_SPLITS, shares) if s > 0}


def split_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Counts per split: every split but the first gets ``round(n * share / total)``, the first the rest;
    each split asked for gets at least one image when ``n`` allows."""
    names = list(shares)
    total = sum(shares.values())
    counts = {sp: int(round(n * shares[sp] / total)) for sp in names[1:]}
    counts = {names[0]: n - sum(counts.values()), **counts}
    for sp in names:
        if counts[sp] == 0 and n >= len(names):
            donor = max(counts, key=counts.get)
            counts[donor] -= 1
            counts[sp] = 1
    return {sp: counts[sp] for sp in names}


def assign_splits(keys: list[str], shares: dict[str, float], seed: int) -> dict[str, str]:
    from .prepare import seeded_groups_split  # the one seeded split of the project
    counts = split_counts(len(set(keys)), shares)
    return seeded_groups_split(keys, tuple(counts.values()), tuple(counts), seed)


# ------------------------------------------------------------------------------------------- medical files
def _high_depth(path: str) -> bool:
    """A 16-bit, 32-bit or float grey PNG/TIFF (rescaled by ``datasets.medical.rescale_16bit``)."""
    if not path.lower().endswith((".png", ".tif", ".tiff")):
        return False
    try:
        with Image.open(path) as img:
            return img.mode in HIGH_DEPTH_MODES
    except (OSError, ValueError):
        return False  # check_pair names the problem


def _page_count(path: str) -> int:
    """Frames of a DICOM mask, slices are not counted here; pages of a raster mask (1 unless multi-page TIFF)."""
    if is_medical(path):
        return count_images(path)
    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1)
    except (OSError, ValueError) as e:
        raise PairError(f"cannot read mask {path}: {e}", "mask") from None


def _positions(img_path: str, mask_path: str, axis: int, frame: int | None) -> list[dict]:
    """The reader options of each 2-D image of a medical pair (one dict per frame or slice); PairError when
    the mask cannot hold the image's frames or slices."""
    try:
        n = count_images(img_path, axis, frame)
    except MedicalFileError as e:
        raise PairError(str(e), "image") from None
    if is_volume(img_path):
        if not is_volume(mask_path):
            raise PairError(f"mask {mask_path} of the volume {img_path} must be a volume of the same grid (NIfTI, "
                            f"MetaImage, NRRD)", "mask")
        try:
            same_grid(img_path, mask_path, frame)
        except MedicalFileError as e:
            raise PairError(str(e), "size") from None
        extra = {"frame": frame} if frame is not None else {}
        return [{"slice": k, "axis": axis, **extra} for k in range(n)]
    try:
        m = _page_count(mask_path)
    except MedicalFileError as e:
        raise PairError(str(e), "mask") from None
    if m != n:
        raise PairError(f"mask {mask_path} has {m} frame(s)/page(s) but its image {img_path} has {n}; a multi-frame "
                        f"DICOM pairs with a DICOM mask of as many frames or a multi-page TIFF", "size")
    return [{"frame": k} for k in range(n)] if n > 1 else [{}]


def pair_items(img_path: str, mask_path: str, img_rel: str, window=None, axis: int = 2, frame: int | None = None,
               empty_slices: str = "drop", empty_fraction: float = 0.1, allow_empty: bool = False,
               seed: int = 0) -> tuple[list[tuple[dict, object, object]], int]:
    """The records' extra fields, image and bool mask of one pair: one item for a 2-D file, one per frame or
    slice of a medical file (after the empty-slice rule), and how many empty slices were left out.  Raises
    :class:`PairError`."""
    if not is_medical(img_path):
        if not _high_depth(img_path):
            pair = check_pair(img_path, mask_path, allow_empty=allow_empty)
            return [({}, pair.image, pair.mask)], 0
        try:
            with Image.open(img_path) as img:
                medical = rescale_16bit(np.asarray(img), img_path, window)
        except (OSError, ValueError) as e:
            raise PairError(f"cannot decode image {img_path}: {e}", "image") from None
        pair = check_pair(medical.rgb, mask_path, allow_empty=allow_empty, image_name=img_path)
        return [({"reader": medical.choices, "spacing": None, "source_format": "16-bit"}, pair.image, pair.mask)], 0
    positions = _positions(img_path, mask_path, axis, frame)
    items, pinned = [], window
    for pos in positions:
        try:
            medical = read_medical(img_path, window=pinned, **pos)
        except MedicalFileError as e:
            raise PairError(str(e), "image") from None
        if "slice" in pos:  # whole-volume numbers: resolved once, the same for every slice
            pinned = medical.choices["window"]
        try:
            mask = read_mask(mask_path, **pos)
        except BadSampleError as e:
            raise PairError(str(e), "mask") from None
        where = f" ({', '.join(f'{k} {v}' for k, v in pos.items())})" if pos else ""
        pair = check_pair(medical.rgb, mask, allow_empty=True, image_name=img_path + where,
                          mask_name=mask_path + where)
        fields = {"reader": medical.choices, "spacing": list(medical.spacing) if medical.spacing else None,
                  "source_format": medical.info.get("format")}
        if medical.info.get("series_uid"):
            fields.update(series_uid=medical.info["series_uid"], sop_instance_uid=medical.info["sop_instance_uid"])
        items.append((fields, pair.image, pair.mask))
    if len(items) == 1:
        if not allow_empty and not items[0][2].any():
            raise PairError(f"mask {mask_path} is empty (no foreground pixel): fix it, remove the pair, or keep "
                            f"images without a target with --allow-empty", "empty")
        return items, 0
    empty = [i for i, it in enumerate(items) if not it[2].any()]
    keep = set(range(len(items))) - set(empty)
    if empty_slices == "keep":
        keep |= set(empty)
    elif empty_slices == "sample":
        keep |= set(random.Random(f"{seed}:{img_rel}").sample(empty, int(round(len(empty) * empty_fraction))))
    if not keep:
        raise PairError(f"mask {mask_path} is empty in all {len(items)} frames/slices of {img_path}; keep them with "
                        f"--empty-slices keep (or sample)", "empty")
    return [it for i, it in enumerate(items) if i in keep], len(items) - len(keep)


# ------------------------------------------------------------------------------------------------- output
def check_name(name: str | None) -> str:
    if not name:
        raise ValueError("--name is required: the dataset name you will pass to --data")
    if not NAME_RE.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '.', '-' (no spaces, commas or slashes)")
    if name in DATASETS:
        raise ValueError(f"--name {name!r} is a built-in dataset; prepare it with python -m datasets.prepare, or "
                         f"choose another name")
    return name


def register(data_root: str, name: str, entry: dict) -> str:
    """Add/replace ``name`` in ``<data_root>/datasets.json`` (atomic write); returns the registry path."""
    path = user_registry_path(data_root)
    table = {"datasets": {}}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset registry {path} is not valid JSON ({e}); fix or delete it") from None
        if not isinstance(table.get("datasets"), dict):
            raise ValueError(f"dataset registry {path} must be an object {{\"datasets\": {{...}}}}")
    table["datasets"][name] = entry
    write_json_atomic(path, table, ensure_ascii=False)
    return path


def _place(src: str, dst: str, link: bool) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if link:
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copyfile(src, dst)


def _companions(src: str, dst: str) -> list[tuple[str, str]]:
    """The data file a MetaImage header (``.mhd``) names (``ElementDataFile = a.raw``), to copy beside it."""
    if not src.lower().endswith(".mhd"):
        return []
    try:
        with open(src, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition("=")
                value = value.strip()
                if key.strip() == "ElementDataFile" and value and value.upper() != "LOCAL" and "%" not in value \
                        and not os.path.isabs(value):
                    return [(os.path.join(os.path.dirname(src), value), os.path.join(os.path.dirname(dst), value))]
    except OSError:
        pass
    return []


def _existing_output(out_dir: str, prompts_dir: str) -> list[str]:
    found = [os.path.join(out_dir, sub) for sub in ("images", "masks") if os.path.exists(os.path.join(out_dir, sub))]
    return found + [os.path.join(prompts_dir, f"{sp}.json") for sp in ALL_SPLITS
                    if os.path.exists(os.path.join(prompts_dir, f"{sp}.json"))]


def make_manifest(images: str, masks: str, name: str, class_name: str | None = None, prompts_csv: str | None = None,
                  split: str = "80/10/10", seed: int = 0, allow_empty: bool = False, descriptions=None,
                  kind: str = "custom", mask_suffixes=(), link: bool = False, data_root: str = "data",
                  prompts_root: str = "prompts_json", overwrite: bool = False, dry_run: bool = False,
                  window=None, axis: int = 2, frame: int | None = None, empty_slices: str = "drop",
                  empty_fraction: float = 0.1, log=print) -> dict:
    """Pair, validate, split, write and register (module docstring); returns the report dict."""
    t0 = time.time()
    name = check_name(name)
    shares = parse_split(split)
    check_window(window)
    if empty_slices not in EMPTY_SLICES:
        raise ValueError(f"--empty-slices {empty_slices!r}: use one of {', '.join(EMPTY_SLICES)}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"--empty-fraction {empty_fraction}: give a share between 0 and 1")
    slicing = {"window": window, "axis": axis, "frame": frame, "empty_slices": empty_slices,
               "empty_fraction": empty_fraction, "allow_empty": allow_empty, "seed": seed}
    out_dir, prompts_dir = os.path.join(data_root, name), os.path.join(prompts_root, name)
    existing = _existing_output(out_dir, prompts_dir)
    if existing and not overwrite and not dry_run:
        raise FileExistsError(f"dataset '{name}' exists ({', '.join(existing)}); pass --overwrite to replace it, "
                              f"or choose another --name")
    suffixes = tuple(MASK_SUFFIXES) + tuple(mask_suffixes or ())
    pairs, rejected = pair_files(images, masks, suffixes)
    table, csv_names = read_prompt_csv(prompts_csv) if prompts_csv else ({}, [])
    class_name = (class_name or DEFAULT_CLASS).strip()
    descriptions = tuple(descriptions) if descriptions else default_descriptions(class_name)
    info = DatasetInfo(kind, class_name, "non_radiology", None, tuple(shares), False, descriptions)
    log(f"[make_manifest] {name}: {len(pairs)} image/mask pairs found in {images} + {masks}; validating ...")

    records, sources, n_empty, n_dropped = [], {}, 0, 0
    for img_rel, mask_rel in pairs:
        img_path, mask_path = os.path.join(images, img_rel), os.path.join(masks, mask_rel)
        given = None
        if prompts_csv:
            given = csv_prompts(table, img_rel)
            if given is None:
                rejected.append((img_path, f"no row for this image in --prompts {prompts_csv}"))
                continue
        try:
            items, dropped = pair_items(img_path, mask_path, img_rel, **slicing)
        except PairError as e:
            rejected.append((mask_path if e.reason in ("mask", "size", "empty") else img_path, str(e)))
            continue
        n_dropped += dropped
        for fields, image, mask in items:
            rec = {"img_name": img_rel, "mask_name": mask_rel, "prompts": {}, "bbox": None, "cat": 1,
                   "segment_id": 0, "sentences": [], "class_name": class_name, **fields}
            attrs = attributes_from(mask, image, rec, name, f"{img_path}", data_root, info=info)
            rec = with_prompts(rec, attrs, name, data_root, info=info)
            if given is not None:
                rec["prompts"] = given
            n_empty += not mask.any()
            records.append(rec)
        sources[img_rel] = (img_path, mask_path)
    matched = {k for r in records for k in (r["img_name"], split_name(r["img_name"])[0],
                                             os.path.basename(r["img_name"]),
                                             os.path.basename(split_name(r["img_name"])[0]))}
    unmatched_rows = [f"line {line}: '{n}'" for line, n in csv_names if n not in matched]

    report = {"dataset": name, "images": os.path.abspath(images), "masks": os.path.abspath(masks),
              "prompts_csv": os.path.abspath(prompts_csv) if prompts_csv else None,
              "class_name": class_name, "seed": seed, "split": shares, "mode": "link" if link else "copy",
              "allow_empty": allow_empty, "window": window, "axis": axis, "frame": frame,
              "empty_slices": empty_slices, "empty_fraction": empty_fraction, "empty_slices_left_out": n_dropped,
              "pairs_found": len(pairs), "records": len(records), "empty_masks": n_empty,
              "rejected": [{"file": f, "reason": r} for f, r in sorted(rejected)],
              "csv_rows_without_image": unmatched_rows}
    _log_rejected(report, log)
    if unmatched_rows:
        log(f"[make_manifest] {len(unmatched_rows)} rows of {prompts_csv} match no usable image: "
            + "; ".join(unmatched_rows[:10]) + (" ..." if len(unmatched_rows) > 10 else ""))
    if not records:
        raise ValueError(f"nothing usable left for '{name}': {len(rejected)} files rejected (listed above); "
                         f"fix them and rerun")

    assign = assign_splits([split_group(r) for r in records], shares, seed)
    manifests = {sp: sorted((r for r in records if assign[split_group(r)] == sp), key=_record_order)
                 for sp in shares}
    report["splits"] = {sp: len(v) for sp, v in manifests.items()}
    for sp, v in manifests.items():
        if not v:
            log(f"[make_manifest] note: split '{sp}' gets no image ({len(records)} usable); no {sp}.json written")
    manifests = {sp: v for sp, v in manifests.items() if v}
    if dry_run:
        report["seconds"] = round(time.time() - t0, 2)
        log(f"[make_manifest] dry run: {len(records)} records ({_counts(manifests)}); nothing written")
        return report

    _write(out_dir, prompts_dir, manifests, sources, link, overwrite)
    entry = {"kind": kind, "class_name": class_name, "family": "non_radiology", "splits": list(manifests),
             "multi_target": False, "descriptions": list(descriptions),
             "source": {"images": report["images"], "masks": report["masks"], "prompts_csv": report["prompts_csv"],
                        "mode": report["mode"]},
             "prompts_root": os.path.abspath(prompts_root), "records": report["splits"],
             "created_by": "python -m datasets.make_manifest", "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["registry"] = register(data_root, name, entry)
    report["seconds"] = round(time.time() - t0, 2)
    write_json_atomic(os.path.join(out_dir, REPORT), report, ensure_ascii=False)
    log(f"[make_manifest] {len(records)} records ({_counts(manifests)}) -> {out_dir}/{{images,masks}} "
        f"({report['mode']}), {prompts_dir}/{{{','.join(manifests)}}}.json; report {os.path.join(out_dir, REPORT)}")
    log(f"[make_manifest] registered '{name}' in {report['registry']}; train with:\n"
        f"  python train.py --data {name} --data-root {data_root} --prompts-root {prompts_root} --model clipseg "
        f"--prompt p1")
    return report


def split_group(record: dict) -> str:
    """What the split keeps together: a DICOM series, else a file (all the slices of a volume)."""
    return record.get("series_uid") or record["img_name"]


def _record_order(record: dict) -> tuple:
    reader = record.get("reader") or {}
    return record["img_name"], reader.get("frame") or 0, reader.get("slice") or 0


def _counts(manifests: dict) -> str:
    return ", ".join(f"{sp} {len(v)}" for sp, v in manifests.items())


def _log_rejected(report: dict, log) -> None:
    rej = report["rejected"]
    if rej:
        log(f"[make_manifest] rejected {len(rej)} files:")
        for r in rej:
            log(f"  {r['file']}: {r['reason']}")
    else:
        log("[make_manifest] rejected 0 files")


def _write(out_dir: str, prompts_dir: str, manifests: dict, sources: dict, link: bool, overwrite: bool) -> None:
    """Copy/link into a staging folder, then swap it in; manifests are written atomically, stale splits removed."""
    stage = os.path.join(out_dir, f".staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        placed = set()  # the frames/slices of one file share it: placed once
        for recs in manifests.values():
            for r in recs:
                img_path, mask_path = sources[r["img_name"]]
                for src, dst in ((img_path, os.path.join(stage, "images", r["img_name"])),
                                 (mask_path, os.path.join(stage, "masks", r["mask_name"]))):
                    if dst not in placed:
                        placed.add(dst)
                        for extra_src, extra_dst in _companions(src, dst):
                            _place(extra_src, extra_dst, link)
                        _place(src, dst, link)
        for sub in ("images", "masks"):
            final = os.path.join(out_dir, sub)
            if os.path.lexists(final):
                if not overwrite:
                    raise FileExistsError(f"{final} exists; pass --overwrite")
                shutil.rmtree(final)
            os.replace(os.path.join(stage, sub), final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for sp in ALL_SPLITS:
        path = os.path.join(prompts_dir, f"{sp}.json")
        if sp in manifests:
            write_json_atomic(path, manifests[sp], ensure_ascii=False)
        elif os.path.exists(path):  # --overwrite: a split this run does not make
            os.remove(path)


# -------------------------------------------------------------------------------------------------- check
def check_dataset(name: str, data_root: str = "data", prompts_root: str = "prompts_json", allow_empty: bool = False,
                  log=print) -> dict:
    """Validate ``<prompts_root>/<name>/*.json`` against ``<data_root>/<name>``; writes nothing.  Returns
    ``{"records": {split: n}, "problems": [...]}``."""
    prompts_dir = os.path.join(prompts_root, name)
    if not os.path.isdir(prompts_dir):
        raise FileNotFoundError(f"--check: manifest folder {prompts_dir} does not exist")
    made = os.path.join(data_root, name, REPORT)
    if name in DATASETS:  # datasets.prepare keeps empty masks (BUSI normal images)
        allow_empty = True
    elif os.path.isfile(made):  # as the dataset was made
        with open(made, encoding="utf-8") as f:
            allow_empty = allow_empty or bool(json.load(f).get("allow_empty"))
    problems, counts, split_of = [], {}, {}
    try:
        info = get_dataset(name, data_root)
    except ValueError:
        info = None
        problems.append(f"'{name}' is not registered in {user_registry_path(data_root)} (nor built in): "
                        f"train.py --data {name} --data-root {data_root} will not find it; rerun make_manifest")
    files = [sp for sp in ALL_SPLITS if os.path.isfile(os.path.join(prompts_dir, f"{sp}.json"))]
    if not files:
        raise FileNotFoundError(f"--check: no train/val/test.json in {prompts_dir}")
    if info is not None and set(files) - set(info.splits):
        problems.append(f"{prompts_dir} has {sorted(set(files) - set(info.splits))} but the registry lists splits "
                        f"{list(info.splits)}")
    keys = None
    for sp in files:
        path = os.path.join(prompts_dir, f"{sp}.json")
        try:
            records = load_manifest(path)
        except ManifestError as e:
            problems.append(str(e))
            continue
        counts[sp] = len(records)
        for i, r in enumerate(records):
            where = f"{path}, record {i}"
            if r["img_name"] in split_of and split_of[r["img_name"]] != sp:
                problems.append(f"{where}: image {r['img_name']} is also in {split_of[r['img_name']]}.json "
                                f"(an image in two splits leaks test data)")
            split_of.setdefault(r["img_name"], sp)
            try:
                check_record(r, os.path.join(data_root, name), allow_empty)
            except PairError as e:
                problems.append(f"{where}: {e}")
            keys = set(r["prompts"]) if keys is None else keys & set(r["prompts"])
    log(f"[make_manifest --check] {name}: records " + ", ".join(f"{sp} {n}" for sp, n in counts.items())
        + f"; prompt keys in every record: {', '.join(sorted(keys or ())) or 'none'}")
    for p in problems:
        log(f"  problem: {p}")
    log(f"[make_manifest --check] {len(problems)} problems")
    return {"records": counts, "problems": problems, "prompt_keys": sorted(keys or ())}


def check_record(record: dict, folder: str, allow_empty: bool) -> None:
    """Check one record's pair under ``folder``/{images,masks}, read with the record's ``reader`` options (the
    frame or slice and the window of a medical file); PairError when it fails."""
    img_path = os.path.join(folder, "images", record["img_name"])
    mask_path = os.path.join(folder, "masks", record["mask_name"])
    if not record.get("reader"):
        check_pair(img_path, mask_path, allow_empty=allow_empty)
        return
    try:
        image = np.asarray(read_image(img_path, **reader_options(record))[0])
    except (BadSampleError, ValueError) as e:
        raise PairError(str(e), "image") from None
    try:
        mask = read_mask(mask_path, **reader_options(record, mask=True))
    except (BadSampleError, ValueError) as e:
        raise PairError(str(e), "mask") from None
    position = {k: v for k, v in record["reader"].items() if k != "window"}
    where = f" ({', '.join(f'{k} {v}' for k, v in position.items())})" if position else ""
    empty_ok = allow_empty or bool(position)  # kept empty slices follow --empty-slices, recorded in the report
    check_pair(image, mask, allow_empty=empty_ok, image_name=img_path + where, mask_name=mask_path + where)


# --------------------------------------------------------------------------------------------------- main
def main(args) -> dict:
    if args.check is not None:
        prompts_root, name = args.prompts_root, args.name
        if args.check:
            folder = os.path.normpath(args.check)
            prompts_root, name = os.path.dirname(folder) or ".", os.path.basename(folder)
        if not name:
            raise ValueError("--check needs --name NAME or the manifest folder (--check PROMPTS_ROOT/NAME)")
        result = check_dataset(name, args.data_root, prompts_root, args.allow_empty)
        if result["problems"]:
            raise ValueError(f"--check: {len(result['problems'])} problems in {os.path.join(prompts_root, name)} "
                             f"(listed above)")
        return result
    if not args.images or not args.masks:
        raise ValueError("give --images DIR and --masks DIR (or --check to validate an existing dataset)")
    return make_manifest(args.images, args.masks, args.name, args.class_name, args.prompts, args.split, args.seed,
                         args.allow_empty, args.description, args.kind, args.mask_suffix, args.link, args.data_root,
                         args.prompts_root, args.overwrite, args.dry_run, window=args.window, axis=args.axis,
                         frame=args.frame, empty_slices=args.empty_slices, empty_fraction=args.empty_fraction)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
