"""CheXlocalize (Saporta et al. 2022): radiologist segmentations of 10 pathologies on CheXpert val/test X-rays.

Layout (anywhere down to three levels below ``--src``): ``gt_segmentations_val.json`` and
``gt_segmentations_test.json``, each ``{image_id: {pathology: {"size": [h, w], "counts": RLE}}}`` in
COCO run-length encoding (decoded with ``pycocotools.mask.decode``), and the CheXpert images
``.../<patient>/<study>/<view>.jpg`` (e.g. ``CheXpert/val/patient64541/study1/view1_frontal.jpg``), whose
id is ``<patient>_<study>_<view>`` (``patient64541_study1_view1_frontal``).

Records: one per (image, pathology) whose mask is non-empty. Empty (image, pathology) entries (the
pathology is absent) give no record; an image with no non-empty pathology gives no record; both are
counted in the notes. Output: image ``<id>.jpg`` (copied), mask ``<id>_<pathology slug>.png``. Record
fields: ``class_name`` (the pathology), ``pathology`` (all pathologies present in that image, in
sorted order: the paper's "... are present" attribute), ``view`` ("frontal"/"lateral"), ``patient``.

Split: the official test set is ``test``; the official validation set is divided into train/val by
the seeded patient-level split with the paper's proportions (1279/446 records).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .common import Conversion, PrepareError, Sample, Target, candidate_roots, safe_stem, unknown_layout

JSON_FILES = {"trainval": "gt_segmentations_val.json", "test": "gt_segmentations_test.json"}


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


def convert_chexlocalize(src: str) -> Conversion:
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
    samples, unpaired, notes = [], [], []
    for split in ("trainval", "test"):
        if split not in found:
            notes.append(f"{JSON_FILES[split]} not found: no {'train/val' if split == 'trainval' else 'test'} records")
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
            present = sorted(masks)
            patient = img_id.split("_")[0]
            targets = []
            for k, pathology in enumerate(present):
                meta = {"class_name": pathology, "pathology": present, "view": view_of(img_id), "patient": patient}
                load = (lambda rw=masks[pathology]: decode_rle(*rw))
                targets.append(Target(f"{img_id}_{safe_stem(pathology).lower()}", load,
                                      meta, k, f"{img_id}/{pathology} in {found[split]}"))
            samples.append(Sample(stem=img_id, image=images[img_id], targets=targets, group=patient,
                                  split=split, source=images[img_id]))
        notes.append(f"{found[split]}: {n_empty_pairs} empty (image, pathology) masks give no record; "
                     f"{n_empty_images} images with no positive segmentation give no record")
    return Conversion(samples, unpaired, notes)
