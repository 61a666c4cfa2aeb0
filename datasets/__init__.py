"""Datasets: a registry of names -> folders and manifests, all read through ``ManifestDataset``.

Layout under a data root (``--data-root``, default ``data/``) and a manifest root
(``--prompts-root``, default ``prompts_json/``)::

    <data_root>/<name>/images/<img_name>      <data_root>/<name>/masks/<mask_name>
    <prompts_root>/<name>/{train,val,test}.json

Several names joined by commas (``kvasir,clinicdb``) give the pooled dataset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from torch.utils.data import ConcatDataset

from .io import BadSampleError, read_image, read_mask
from .manifest import ManifestDataset, ManifestError, collate, load_manifest
from .synthetic import ensure_synthetic
from .transforms import SegTransform


@dataclass(frozen=True)
class DatasetInfo:
    kind: str
    class_name: str
    splits: tuple = ("train", "val", "test")


DATASETS: dict[str, DatasetInfo] = {
    "kvasir": DatasetInfo("endoscopy", "polyp"),
    "clinicdb": DatasetInfo("endoscopy", "polyp"),
    "bkai": DatasetInfo("endoscopy", "polyp"),
    "etis": DatasetInfo("endoscopy", "polyp", ("test",)),
    "colondb": DatasetInfo("endoscopy", "polyp", ("test",)),
    "cvc300": DatasetInfo("endoscopy", "polyp", ("test",)),
    "isic": DatasetInfo("dermoscopy", "skin melanoma"),
    "dfu": DatasetInfo("photo", "foot ulcer"),
    "camus": DatasetInfo("cardiac ultrasound", "left ventricular cavity / myocardium / left atrium cavity"),
    "busi": DatasetInfo("breast ultrasound", "breast tumor"),
    "chexlocalize": DatasetInfo("chest x-ray", "pathology"),
    "synthetic": DatasetInfo("synthetic shapes", "shape"),
}


def parse_names(data: str) -> list[str]:
    names = [n.strip() for n in data.split(",") if n.strip()]
    for n in names:
        if n not in DATASETS:
            raise ValueError(f"unknown dataset '{n}'; choose from: {', '.join(DATASETS)} (comma-separate to pool)")
    return names


def build_dataset(data: str, split: str, model=None, prompt: str = "p1", train: bool = False,
                  data_root: str = "data", prompts_root: str = "prompts_json", manifest: str | None = None,
                  all_prompts: bool = False, return_original: bool = False, augment: bool = False,
                  on_bad_sample: str = "error", input_size: int | None = None, mean=None, std=None):
    """Dataset for ``data`` (one name or comma-separated names) and ``split``.

    The transform uses ``model.input_size``/``image_mean``/``image_std`` unless given.
    ``manifest`` overrides the manifest file (e.g. a perturbed one) for a single dataset.
    """
    names = parse_names(data)
    if manifest and len(names) != 1:
        raise ValueError("--manifest works with a single dataset name")
    size = input_size or (model.input_size if model is not None else 224)
    tf = SegTransform(size, mean or model.image_mean, std or model.image_std, augment=augment and train)
    parts = []
    for name in names:
        if name == "synthetic":
            ensure_synthetic(data_root, prompts_root)
        info = DATASETS[name]
        if split not in info.splits and not manifest:
            if train:
                raise ValueError(f"dataset '{name}' is test-only (out-of-distribution); it has no '{split}' split")
            continue
        path = manifest or os.path.join(prompts_root, name, f"{split}.json")
        parts.append(ManifestDataset(path, os.path.join(data_root, name, "images"),
                                     os.path.join(data_root, name, "masks"), prompt=prompt, transform=tf,
                                     train=train, all_prompts=all_prompts, return_original=return_original,
                                     on_bad_sample=on_bad_sample, name=name))
    if not parts:
        raise ValueError(f"none of {names} has a '{split}' split")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


__all__ = ["DATASETS", "DatasetInfo", "ManifestDataset", "ManifestError", "BadSampleError", "SegTransform",
           "build_dataset", "collate", "ensure_synthetic", "load_manifest", "parse_names", "read_image", "read_mask"]
