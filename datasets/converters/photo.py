"""Photographic datasets: ISIC 2016 Part 1 (skin lesion) and DFU 2022 (foot ulcer).

* isic: the official folders ``ISBI2016_ISIC_Part1_Training_Data/`` (``ISIC_<id>.jpg``),
  ``ISBI2016_ISIC_Part1_Training_GroundTruth/`` (``ISIC_<id>_Segmentation.png``) and the two
  ``..._Test_Data/`` / ``..._Test_GroundTruth/`` folders (any folder names containing
  "Training_Data", "Training_GroundTruth", "Test_Data", "Test_GroundTruth" are accepted). The
  official test set is the test split; validation is carved from the official training set by the
  seeded split (paper: 810/90 of 900). Masks keep the release's (and the paper's) name,
  ``masks/ISIC_<id>_Segmentation.png``.
* dfu: every ``<prefix>_images/`` folder with a sibling ``<prefix>_masks/`` (DFU 2022:
  ``DFUC2022_train_images/`` + ``DFUC2022_train_masks/``, masks ``<stem>.png``); image folders without a
  masks folder (the unlabelled validation/test releases) are reported and not used.
"""
from __future__ import annotations

import os

from .common import (
    Conversion,
    PrepareError,
    Sample,
    Target,
    candidate_roots,
    descend_same_name,
    image_files,
    pair_by_stem,
    read_binary_mask,
    unknown_layout,
)


def _dirs_matching(root: str, needle: str) -> list[str]:
    try:
        return sorted(os.path.join(root, e) for e in os.listdir(root)
                      if needle.lower() in e.lower() and os.path.isdir(os.path.join(root, e)))
    except OSError:
        return []


def convert_isic(src: str) -> Conversion:
    wanted = {"trainval": ("training_data", "training_groundtruth"), "test": ("test_data", "test_groundtruth")}
    found: dict[str, tuple[str, str]] = {}
    for root in candidate_roots(src):
        for split, (img_key, gt_key) in wanted.items():
            imgs, gts = _dirs_matching(root, img_key), _dirs_matching(root, gt_key)
            if split not in found and imgs and gts:
                found[split] = (descend_same_name(imgs[0]), descend_same_name(gts[0]))
    if "trainval" not in found:
        raise unknown_layout("isic", src, "ISBI2016_ISIC_Part1_Training_Data/ + "
                             "ISBI2016_ISIC_Part1_Training_GroundTruth/"
                             " (and ..._Test_Data/ + ..._Test_GroundTruth/), masks ISIC_<id>_Segmentation.png")
    notes = []
    if "test" not in found:
        notes.append("no Test_Data/Test_GroundTruth folders found: the test split will be empty")
    samples, unpaired = [], []
    for split, (img_dir, gt_dir) in sorted(found.items()):
        images = image_files(img_dir, (".jpg", ".jpeg", ".png"))
        masks = image_files(gt_dir, (".png",))
        pairs, bad = pair_by_stem(images, masks, lambda s: s + "_Segmentation", what=f"{split}: ")
        unpaired += bad
        for stem, img, msk in pairs:
            samples.append(Sample(stem=stem, image=img, source=img, split=split,
                                  targets=[Target(os.path.splitext(os.path.basename(msk))[0],
                                                  (lambda p=msk: read_binary_mask(p)),
                                                  {"class_name": "skin melanoma"}, 0, msk)]))
        notes.append(f"{split}: images from {img_dir}, masks from {gt_dir}")
    return Conversion(samples, unpaired, notes)


def convert_dfu(src: str) -> Conversion:
    samples, unpaired, notes, used = [], [], [], 0
    seen_stems: dict[str, str] = {}
    for root in candidate_roots(src):
        for img_dir in _dirs_matching(root, "_images"):
            if not os.path.basename(img_dir).lower().endswith("_images"):
                continue
            prefix = os.path.basename(img_dir)[: -len("_images")]
            mask_dir = os.path.join(root, prefix + "_masks")
            if not os.path.isdir(mask_dir):
                n = len(image_files(img_dir))
                notes.append(f"{img_dir} ({n} images) has no sibling {prefix}_masks/: unlabelled, not used")
                continue
            used += 1
            images, masks = image_files(descend_same_name(img_dir)), image_files(descend_same_name(mask_dir))
            pairs, bad = pair_by_stem(images, masks)
            unpaired += bad
            for stem, img, msk in pairs:
                if stem in seen_stems:
                    raise PrepareError(f"dfu: image stem '{stem}' appears twice: {seen_stems[stem]} and {img}")
                seen_stems[stem] = img
                samples.append(Sample(stem=stem, image=img, source=img,
                                      targets=[Target(stem, (lambda p=msk: read_binary_mask(p)),
                                                      {"class_name": "foot ulcer"}, 0, msk)]))
            notes.append(f"images from {img_dir}, masks from {mask_dir}")
    if not used:
        raise unknown_layout("dfu", src, "<prefix>_images/ with a sibling <prefix>_masks/ "
                             "(DFUC2022_train_images/ + DFUC2022_train_masks/)")
    return Conversion(samples, unpaired, notes)
