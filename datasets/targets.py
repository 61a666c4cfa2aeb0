"""Targets of multi-target datasets: which structure or pathology a record's mask shows, ``--target`` (keep one
class) and ``--multiclass`` (one output channel per class for text-free models).

A record's target is its ``class_name`` (``datasets.prepare`` writes it), else it is read from the names the
paper's released manifests use, which carry no class field:

* CAMUS: ``mask_<k>/<image stem>_gt.png`` (optionally under ``train/`` or ``test/``), k = 1 left ventricular
  cavity, 2 myocardium, 3 left atrium cavity (the label values of the CAMUS ``_gt`` maps);
* CheXlocalize: ``<image stem>_<pathology>.png`` (``..._airspace_opacity.png``).

A text-free model sees only the image; on a dataset where one image has records with different masks it would
be asked for different answers to the same input.  :func:`check_text_free` refuses that unless the run keeps
one class (``--target``, one model per class, as the paper's CNN scripts did) or predicts every class at once
(``--multiclass``).
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from .medical import image_position
from .prompt_templates import CAMUS_STRUCTURES, CHEX_PATHOLOGIES

#: Other names accepted by ``--target`` for the CAMUS structures (the paper's folder names, short codes).
ALIASES = {"left ventricular cavity": ("lv", "mask_1", "left ventricle", "left ventricular"),
           "myocardium": ("myo", "mask_2"),
           "left atrium cavity": ("la", "mask_3", "left atrium")}
#: Class orders of the built-in multi-target datasets (the output channels of a ``--multiclass`` model).
CANONICAL = (CAMUS_STRUCTURES, CHEX_PATHOLOGIES)
_CAMUS_MASK = re.compile(r"(?:^|/)mask_(\d+)/")


def norm(name: str) -> str:
    """Case, '_' / '-' and repeated spaces do not matter: 'Airspace_Opacity' == 'airspace opacity'."""
    return " ".join(re.sub(r"[_\-]+", " ", str(name)).lower().split())


def canonical_name(name: str) -> str:
    """A known class in its usual spelling ('pleural_effusion' -> 'Pleural Effusion'); others unchanged."""
    key = norm(name)
    for group in CANONICAL:
        for c in group:
            if norm(c) == key or key in ALIASES.get(c, ()):
                return c
    return str(name)


def record_target(record: dict) -> str | None:
    """The structure or pathology a record's mask shows (see the module docstring); None when unknown."""
    name = record.get("class_name")
    if isinstance(name, str) and name.strip():
        return canonical_name(name.strip())
    mask = str(record.get("mask_name", "")).replace("\\", "/")
    m = _CAMUS_MASK.search(mask)
    if m and 1 <= int(m.group(1)) <= len(CAMUS_STRUCTURES):
        return CAMUS_STRUCTURES[int(m.group(1)) - 1]
    img_stem = os.path.splitext(os.path.basename(str(record.get("img_name", ""))))[0]
    mask_stem = os.path.splitext(os.path.basename(mask))[0]
    if img_stem and mask_stem.startswith(img_stem + "_"):
        name = canonical_name(mask_stem[len(img_stem) + 1:])
        return name if name in CHEX_PATHOLOGIES else None   # not e.g. ISIC's "_Segmentation"
    return None


def targets_of(records: list[dict]) -> list[str]:
    """The distinct targets of ``records`` in channel order: known classes in their canonical order, then the
    others sorted.  Records without a known target are left out."""
    found = {t for t in (record_target(r) for r in records) if t}
    ordered = [c for group in CANONICAL for c in group if c in found]
    return ordered + sorted(found - set(ordered))


def matches(record: dict, target: str) -> bool:
    t = record_target(record)
    if t is None:
        return False
    key = norm(target)
    return norm(t) == key or key in ALIASES.get(t, ())


def filter_target(records: list[dict], target: str, where: str = "the manifest") -> list[dict]:
    """The records of ``target`` (``--target``); an unknown class is an error listing the classes there are."""
    kept = [r for r in records if matches(r, target)]
    if not kept:
        have = targets_of(records)
        raise ValueError(f"--target {target!r}: no record of that class in {where}; its classes are: "
                         f"{', '.join(repr(c) for c in have) or 'none (records carry no class_name)'}")
    return kept


def image_key(record: dict) -> tuple:
    """Which 2-D image a record shows: its file and, for a frame or slice of a medical file, where in the file,
    so that the slices of one volume are different images."""
    return record["img_name"], image_position(record)


def is_multi_target(records: list[dict]) -> bool:
    """True when one image (one frame or slice of a file) has records with different masks."""
    first: dict[tuple, str] = {}
    for r in records:
        seen = first.setdefault(image_key(r), r["mask_name"])
        if seen != r["mask_name"]:
            return True
    return False


def check_text_free(model_name: str, data: str, multi_target: bool, target: str | None, multiclass: bool) -> None:
    """Refuse a text-free model on multi-target data without ``--target`` or ``--multiclass``."""
    if multi_target and not target and not multiclass:
        raise ValueError(
            f"{model_name} ignores the prompt, but in '{data}' one image has several records with different masks "
            f"(one per structure or pathology): the model would be asked for different answers to the same input. "
            f"Train one model per class with --target CLASS (as the paper's CNN scripts did), or one model with an "
            f"output channel per class with --multiclass")


class ImageTargetsDataset(Dataset):
    """``--multiclass`` training: one item per image whose ``mask`` holds one channel per class of
    ``class_names`` (the union of that class's records; zeros where the image has none), so the model learns
    every target of an image at once.  Built on a :class:`~datasets.manifest.ManifestDataset` (its files,
    transform and bad-sample rule)."""

    def __init__(self, base, class_names):
        self.base, self.class_names = base, tuple(class_names)
        self.manifest_path, self.name = base.manifest_path, base.name
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(base.records):
            groups.setdefault(image_key(r), []).append(i)
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        from .io import BadSampleError, read_image, read_mask
        from .medical import reader_options  # the frame or slice of a record of a medical file
        base, recs = self.base, self.groups[index]
        first = base.records[recs[0]]
        try:
            img, (h, w) = read_image(os.path.join(base.image_dir, first["img_name"]),
                                     draft_size=base.transform.size if base.transform else None,
                                     **reader_options(first))
            masks = np.zeros((len(self.class_names), h, w), bool)
            for i in recs:
                path = os.path.join(base.mask_dir, base.records[i]["mask_name"])
                m = read_mask(path, **reader_options(base.records[i], mask=True))
                if m.shape != (h, w):
                    raise BadSampleError(f"mask {path} is {m.shape[1]}x{m.shape[0]} (WxH) but its image is {w}x{h}")
                masks[base.target_index(i)] |= m
        except BadSampleError as e:
            if base.on_bad_sample == "skip":
                return {"skipped": f"{self.name}[image {index}]: {e}"}
            raise BadSampleError(f"{e} [dataset {self.name}, image {index}]") from None
        image, _ = base.transform(img, masks[0])
        m = torch.from_numpy(masks).to(torch.float32)  # the transform's mask rule, on every channel at once
        m = TF.resize(m, [base.transform.size, base.transform.size], antialias=True)
        return {"image": image, "mask": (m >= 0.5).to(torch.float32), "text": "", "prompt_key": "",
                "orig_size": torch.tensor((h, w)), "name": first["img_name"],
                "mask_name": ",".join(base.records[i]["mask_name"] for i in recs), "index": index,
                "dataset": self.name}
