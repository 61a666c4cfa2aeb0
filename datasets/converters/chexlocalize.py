"""CheXlocalize (Saporta et al. 2022): radiologist segmentations of 10 pathologies on CheXpert val/test X-rays.

Layout (anywhere down to three levels below ``--src``): ``gt_segmentations_val.json`` and
``gt_segmentations_test.json``, each ``{image_id: {pathology: {"size": [h, w], "counts": RLE}}}`` in
COCO run-length encoding (decoded with ``pycocotools.mask.decode``), and the CheXpert images
``.../<patient>/<study>/<view>.jpg`` (e.g. ``CheXpert/val/patient64541/study1/view1_frontal.jpg``), whose
id is ``<patient>_<study>_<view>`` (``patient64541_study1_view1_frontal``).

Records: one per (image, pathology) whose mask is non-empty. Empty (image, pathology) entries (the
pathology is absent) give no record; an image with no non-empty pathology gives no record; both are
counted in the notes. Output: image ``<id>.jpg`` (copied), mask ``<id>_<pathology slug>.png`` (the
paper's names). Record fields: ``class_name`` (the pathology), ``pathology`` (the pathologies present in
that image: the paper's "... are present" attribute, a9), ``pathology_source``, ``view``
("frontal"/"lateral"), ``patient``, ``official_split`` ("val"/"test").

"Present" pathologies: with CheXpert label files (``labels=[CSV, ...]``; ``python -m datasets.prepare
chexlocalize --labels val_labels.csv --labels test_labels.csv``: a ``Path`` column and one column per
observation), the observations labelled 1 (positive), "No Finding" left out, in the files' column order, as
the paper's released prompts ("Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, ... are present");
``pathology_source`` is ``"chexpert labels (<file>)"``. Without them (or for an image the files do not list)
the pathologies with a non-empty mask, sorted; ``pathology_source`` is ``"masks"``.

Split: as the paper's released manifests, the official validation and test sets are pooled and split by
patient with the paper's record counts, 1279/446/452 (``datasets.prepare.RECORD_COUNTS``).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .common import Conversion, PrepareError, Sample, Target, candidate_roots, safe_stem, unknown_layout

JSON_FILES = {"val": "gt_segmentations_val.json", "test": "gt_segmentations_test.json"}
NO_FINDING = "No Finding"
#: CheXpert label-file columns that are not observations
LABEL_META = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"}


def read_labels(paths: list[str]) -> dict[str, tuple[list[str], str]]:
    """image id -> (observations labelled 1 in column order, file name) from CheXpert label CSVs."""
    import csv
    out = {}
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise PrepareError(f"chexlocalize: cannot read labels file {path}: {e}") from None
        if not rows or "Path" not in rows[0]:
            raise PrepareError(f"chexlocalize: labels file {path} has no 'Path' column; expected a CheXpert label "
                               f"CSV (Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, Enlarged "
                               f"Cardiomediastinum, ...) with 1 for a positive observation")
        observations = [c for c in rows[0] if c not in LABEL_META and c != NO_FINDING]
        for r in rows:
            present = []
            for c in observations:
                try:
                    if float(r[c] or "nan") == 1.0:
                        present.append(c)
                except ValueError:
                    raise PrepareError(f"chexlocalize: labels file {path}, {r['Path']}: value {r[c]!r} of "
                                       f"'{c}' is not a number") from None
            out[image_id(r["Path"])] = (present, os.path.basename(path))
    return out


def _rle(rle: dict, where: str) -> dict:
    try:
        counts = rle["counts"]
        return {"size": [int(v) for v in rle["size"]], "counts": counts.encode() if isinstance(counts, str) else counts}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PrepareError(f"chexlocalize: bad RLE for {where}: {type(e).__name__}: {e}; expected "
                           f"{{'size': [h, w], 'counts': '<COCO RLE string>'}}") from None


def rle_area(rle: dict, where: str) -> int:
    """Foreground pixel count of a COCO RLE without decoding it."""
    from pycocotools import mask as mask_utils
    try:
        return int(mask_utils.area(_rle(rle, where)))
    except (TypeError, ValueError) as e:
        raise PrepareError(f"chexlocalize: cannot read RLE of {where}: {e}") from None


def decode_rle(rle: dict, where: str) -> np.ndarray:
    """Binary mask (bool HxW) from a COCO RLE dict with ``size`` [h, w] and ``counts`` (str or bytes)."""
    from pycocotools import mask as mask_utils
    try:
        return mask_utils.decode(_rle(rle, where)).astype(bool)
    except (TypeError, ValueError) as e:
        raise PrepareError(f"chexlocalize: cannot decode RLE of {where}: {type(e).__name__}: {e}") from None


def image_id(path: str) -> str:
    """CheXpert path .../patient64541/study1/view1_frontal.jpg -> patient64541_study1_view1_frontal."""
    parts = os.path.normpath(path).split(os.sep)
    return "_".join(parts[-3:-1] + [os.path.splitext(parts[-1])[0]])


def index_images(src: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if f.lower().endswith((".jpg", ".jpeg", ".png")):
                p = os.path.join(root, f)
                out.setdefault(image_id(p), p)
    return out


def view_of(img_id: str) -> str | None:
    low = img_id.lower()
    return "frontal" if "frontal" in low else "lateral" if "lateral" in low else None


def convert_chexlocalize(src: str, labels: list[str] | None = None) -> Conversion:
    found = {}
    for root in candidate_roots(src, depth=3):
        for split, name in JSON_FILES.items():
            p = os.path.join(root, name)
            if split not in found and os.path.isfile(p):
                found[split] = p
    if not found:
        raise unknown_layout("chexlocalize", src, "gt_segmentations_val.json and gt_segmentations_test.json "
                             "(COCO RLE per image id and pathology) with the CheXpert val/test images "
                             "<patient>/<study>/<view>.jpg")
    images = index_images(src)
    present_of = read_labels(labels) if labels else {}
    samples, unpaired, notes = [], [], []
    n_from_masks = 0
    for split in ("val", "test"):
        if split not in found:
            notes.append(f"{JSON_FILES[split]} not found: the official {split} set is missing from the pool")
            continue
        with open(found[split], encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise PrepareError(f"chexlocalize: {found[split]} is not valid JSON: {e}") from None
        n_empty_pairs, n_empty_images = 0, 0
        for img_id in sorted(data):
            if img_id not in images:
                unpaired.append(f"mask without image: {img_id} in {found[split]} (no "
                                f"{img_id.replace('_', '/', 2)}.jpg under {src})")
                continue
            masks = {}
            for pathology, rle in sorted(data[img_id].items()):
                where = f"{img_id}/{pathology} in {found[split]}"
                if rle_area(rle, where) > 0:
                    masks[pathology] = (rle, where)
                else:
                    n_empty_pairs += 1
            if not masks:
                n_empty_images += 1
                continue
            patient = img_id.split("_")[0]
            if img_id in present_of:
                present, source = present_of[img_id][0], f"chexpert labels ({present_of[img_id][1]})"
            else:
                present, source = sorted(masks), "masks"
                n_from_masks += bool(labels)
            targets = []
            for k, pathology in enumerate(sorted(masks)):
                meta = {"class_name": pathology, "pathology": present, "pathology_source": source,
                        "view": view_of(img_id), "patient": patient, "official_split": split}
                load = (lambda rw=masks[pathology]: decode_rle(*rw))
                targets.append(Target(f"{img_id}_{safe_stem(pathology).lower()}", load,
                                      meta, k, f"{img_id}/{pathology} in {found[split]}"))
            samples.append(Sample(stem=img_id, image=images[img_id], targets=targets, group=patient,
                                  split=None, source=images[img_id]))
        notes.append(f"{found[split]}: {n_empty_pairs} empty (image, pathology) masks give no record; "
                     f"{n_empty_images} images with no positive segmentation give no record")
    notes.append("split: the official val and test sets pooled and split by patient to the paper's record counts")
    notes.append("present pathologies: " + (f"CheXpert labels from {', '.join(map(os.path.basename, labels))}"
                                             + (f"; {n_from_masks} images not in them use their masks"
                                                if n_from_masks else "") if labels else
                                             "from the masks (pass --labels for the CheXpert labels, as the paper)"))
    return Conversion(samples, unpaired, notes)
