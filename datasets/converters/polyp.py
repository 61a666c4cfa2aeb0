"""Endoscopy (polyp) converters: Kvasir-SEG, CVC-ClinicDB, BKAI-IGH NeoPolyp, ETIS, CVC-ColonDB, CVC-300.

All produce one record per image with class name "polyp", under the names of the paper's released
manifests. Layouts (searched in ``--src`` and its sub-folders down to two levels):

* kvasir: ``images/`` + ``masks/`` (JPEG, same file names). The masks are copied byte for byte as
  ``masks/<id>.jpg`` (the paper's name; the loader binarises the JPEG noise with >= 128).
* clinicdb: ``Original/`` + ``Ground Truth/`` (TIFF, official release), or ``images/`` + ``masks/`` (PNG copy).
* bkai: ``train/`` + ``train_gt/`` (Kaggle's nested ``train/train/`` is followed). Masks are RGB:
  red = neoplastic, green = non-neoplastic; both become "polyp" (foreground where the red or the green
  channel is >= 128). The record's ``lesion_types`` lists which of the two the mask holds. The RGB mask
  is copied byte for byte as ``masks/<id>.jpeg`` (the paper's name), which the loader's rule (maximum over
  the channels >= 128) reads as red or green; a mask where that differs is reported. ``test/`` has no
  ground truth and is not used (reported as a note).
* etis, colondb, cvc300 (test only): ``images/`` + ``masks/`` (the usual polyp test-set layout), or
  ``Original/`` + ``Ground Truth/``; ETIS also in its official layout ``ETIS-LaribPolypDB/`` +
  ``GroundTruth/`` with mask ``p<N>`` for image ``<N>``.
"""
from __future__ import annotations

import os

import numpy as np

from .common import (
    COPY_EXTS,
    Conversion,
    PrepareError,
    Sample,
    Target,
    candidate_roots,
    descend_same_name,
    find_dir,
    image_files,
    listing,
    pair_by_stem,
    read_array,
    read_binary_mask,
    unknown_layout,
)

# (image folder names, mask folder names, mask stem from image stem, description)
USUAL = (("images",), ("masks",), lambda s: s, "images/ + masks/ (same stems)")
CVC_TIFF = (("Original",), ("Ground Truth", "GroundTruth", "Ground_Truth"), lambda s: s,
            "Original/ + 'Ground Truth'/ (same stems)")
ETIS_OFFICIAL = (("ETIS-LaribPolypDB", "images"), ("GroundTruth", "Ground Truth"), lambda s: "p" + s,
                 "ETIS-LaribPolypDB/ + GroundTruth/ (mask p<N> for image <N>)")

LAYOUTS = {
    "kvasir": [USUAL],
    "clinicdb": [CVC_TIFF, USUAL],
    "etis": [USUAL, CVC_TIFF, ETIS_OFFICIAL],
    "colondb": [USUAL, CVC_TIFF],
    "cvc300": [USUAL, CVC_TIFF],
}


def find_pair_dirs(name: str, src: str, layouts: list) -> tuple[str, str, str, object]:
    """The first (root, image dir, mask dir, mask_key) of ``layouts`` found in ``src`` or below."""
    for root in candidate_roots(src):
        for img_names, mask_names, key, _ in layouts:
            img_dir, mask_dir = find_dir(root, img_names), find_dir(root, mask_names)
            if img_dir and mask_dir and img_dir != mask_dir:
                return root, descend_same_name(img_dir), descend_same_name(mask_dir), key
    raise unknown_layout(name, src, " or ".join(layout[3] for layout in layouts))


def copied_mask(stem: str, path: str, meta: dict, load=None) -> Target:
    """A target whose output mask is the release's own file (a JPEG or PNG), copied under ``<stem><ext>``."""
    ext = os.path.splitext(path)[1]
    if ext.lower() not in COPY_EXTS:
        return Target(stem, load or (lambda p=path: read_binary_mask(p)), meta, 0, path)
    return Target(stem, load or (lambda p=path: read_binary_mask(p)), meta, 0, path, copy_from=path, mask_ext=ext)


def paired_samples(name: str, src: str, layouts: list, copy_masks: bool = False) -> Conversion:
    _, img_dir, mask_dir, key = find_pair_dirs(name, src, layouts)
    images, masks = image_files(img_dir), image_files(mask_dir)
    if not images:
        raise PrepareError(f"{name}: no image files in {img_dir} ({listing(img_dir)})")
    pairs, unpaired = pair_by_stem(images, masks, key)
    samples = [Sample(stem=stem, image=img, source=img,
                      targets=[copied_mask(stem, msk, {"class_name": "polyp"}) if copy_masks else
                               Target(stem, (lambda p=msk: read_binary_mask(p)), {"class_name": "polyp"}, 0, msk)])
               for stem, img, msk in pairs]
    return Conversion(samples, unpaired, [f"images from {img_dir}, masks from {mask_dir}"])


def convert_kvasir(src: str) -> Conversion:
    return paired_samples("kvasir", src, LAYOUTS["kvasir"], copy_masks=True)


def convert_clinicdb(src: str) -> Conversion:
    return paired_samples("clinicdb", src, LAYOUTS["clinicdb"])


def convert_etis(src: str) -> Conversion:
    return _test_only("etis", src)


def convert_colondb(src: str) -> Conversion:
    return _test_only("colondb", src)


def convert_cvc300(src: str) -> Conversion:
    return _test_only("cvc300", src)


def _test_only(name: str, src: str) -> Conversion:
    conv = paired_samples(name, src, LAYOUTS[name])
    for s in conv.samples:
        s.split = "test"
    return conv


# ------------------------------------------------------------------------------------------------ BKAI
def bkai_mask(path: str) -> tuple[np.ndarray, list[str]]:
    """Polyp mask (red or green >= 128) and the lesion types present, from a BKAI RGB mask."""
    arr = read_array(path)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise PrepareError(f"BKAI mask {path} is not RGB (shape {arr.shape}); expected red = neoplastic, "
                           f"green = non-neoplastic")
    red, green = arr[..., 0] >= 128, arr[..., 1] >= 128
    types = [t for t, m in (("neoplastic", red & ~green), ("non-neoplastic", green & ~red)) if m.any()]
    return red | green, types


def convert_bkai(src: str) -> Conversion:
    layouts = [(("train",), ("train_gt",), lambda s: s, "train/ (images) + train_gt/ (RGB masks, same stems)")]
    root, img_dir, mask_dir, key = find_pair_dirs("bkai", src, layouts)
    images, masks = image_files(img_dir), image_files(mask_dir)
    pairs, unpaired = pair_by_stem(images, masks, key)
    samples = []
    for stem, img, msk in pairs:
        meta = {"class_name": "polyp"}

        def load(p=msk, meta=meta):
            mask, types = bkai_mask(p)
            meta["lesion_types"] = types      # filled when the mask is read, before the record is written
            return mask
        samples.append(Sample(stem=stem, image=img, source=img, targets=[copied_mask(stem, msk, meta, load)]))
    notes = [f"images from {img_dir}, masks from {mask_dir}; red (neoplastic) and green (non-neoplastic) merged"]
    test_dir = find_dir(root, ("test",))
    if test_dir:
        notes.append(f"{test_dir} has no ground truth: not used")
    return Conversion(samples, unpaired, notes)
