"""Datasets: a registry of names -> folders and manifests, all read through ``ManifestDataset``.

Layout under a data root (``--data-root``, default ``data/``) and a manifest root
(``--prompts-root``, default ``prompts_json/``)::

    <data_root>/<name>/images/<img_name>      <data_root>/<name>/masks/<mask_name>
    <prompts_root>/<name>/{train,val,test}.json

Several names joined by commas (``kvasir,clinicdb``) give the pooled dataset.
"""
from __future__ import annotations

import os

from torch.utils.data import ConcatDataset

from .io import BadSampleError, read_image, read_mask
from .manifest import ManifestDataset, ManifestError, collate, load_manifest, swap_prompts
from .registry import DATASETS, DatasetInfo, dataset_names, get_dataset, parse_names
from .subsets import fraction_subset
from .synthetic import ensure_synthetic
from .targets import ImageTargetsDataset, check_text_free, is_multi_target
from .transforms import SegTransform


def build_dataset(data: str, split: str, model=None, prompt: str = "p1", train: bool = False,
                  data_root: str = "data", prompts_root: str = "prompts_json", manifest: str | None = None,
                  all_prompts: bool = False, return_original: bool = False, augment: bool = False,
                  on_bad_sample: str = "error", input_size: int | None = None, mean=None, std=None,
                  drop_duplicates: bool = False, target: str | None = None, per_image: bool = False,
                  train_fraction: float = 1.0, fraction_seed: int = 0):
    """Dataset for ``data`` (one name or comma-separated names) and ``split``.

    The transform uses ``model.input_size``/``image_mean``/``image_std`` unless given.
    ``manifest`` overrides the manifest file (e.g. a perturbed one) for a single dataset.
    ``drop_duplicates``: leave out records repeating an earlier record's image and mask (kept by default, with a
    warning).  ``target``: keep the records of one structure or pathology (``--target``; datasets.targets).
    A model with ``class_names`` (``--multiclass``) gets each record's ``target_index``; ``per_image`` gives one
    item per image with a mask channel per class instead (its training set).  A text-free model on a dataset
    where one image has records with different masks needs ``target`` or ``class_names``.
    ``train_fraction`` < 1 keeps a seeded, nested subset of each dataset's records (datasets.subsets); each part
    records what it kept in ``part.subset``.
    """
    names = parse_names(data, data_root)  # built-ins and the datasets registered under data_root
    if manifest and len(names) != 1:
        raise ValueError("--manifest works with a single dataset name")
    size = input_size or (model.input_size if model is not None else 224)
    tf = SegTransform(size, mean or model.image_mean, std or model.image_std, augment=augment and train)
    parts = []
    for name in names:
        if name == "synthetic":
            ensure_synthetic(data_root, prompts_root)
        info = get_dataset(name, data_root)
        if split not in info.splits and not manifest:
            if train:
                raise ValueError(f"dataset '{name}' is test-only (out-of-distribution); it has no '{split}' split")
            continue
        path = manifest or os.path.join(prompts_root, name, f"{split}.json")
        class_names = getattr(model, "class_names", None)
        part = ManifestDataset(path, os.path.join(data_root, name, "images"), os.path.join(data_root, name, "masks"),
                               prompt=prompt, transform=tf, train=train, all_prompts=all_prompts,
                               return_original=return_original, on_bad_sample=on_bad_sample, name=name,
                               drop_duplicates=drop_duplicates, target=target, class_names=class_names)
        if train_fraction < 1.0:
            part.records, part.subset = fraction_subset(part.records, train_fraction, fraction_seed)
            part.samples = part._index()
        if model is not None and not getattr(model, "uses_text", True):
            check_text_free(getattr(model, "name", "this model"), name,
                            info.multi_target or is_multi_target(part.records), target, bool(class_names))
        if per_image:
            if not class_names:
                raise ValueError("per_image items need a --multiclass model (one output channel per class)")
            part = ImageTargetsDataset(part, class_names)
        parts.append(part)
    if not parts:
        raise ValueError(f"none of {names} has a '{split}' split")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def swap_dataset_prompts(ds):
    """The mismatched-prompt control: each record gets the prompts of another target in the same image
    (``swap_prompts``); records without another target are left out.  Returns (dataset, number left out)."""
    parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
    new_parts, dropped = [], 0
    for part in parts:
        recs, d = swap_prompts(part.records)
        dropped += d
        if recs:
            new_parts.append(ManifestDataset(recs, part.image_dir, part.mask_dir, prompt=part.prompt,
                                             transform=part.transform, all_prompts=part.all_prompts,
                                             return_original=True, on_bad_sample=part.on_bad_sample, name=part.name))
    if not new_parts:
        raise ValueError("--swap-prompts: no image has more than one target, nothing to swap")
    return (new_parts[0] if len(new_parts) == 1 else ConcatDataset(new_parts)), dropped


__all__ = ["DATASETS", "DatasetInfo", "dataset_names", "get_dataset", "ManifestDataset", "ManifestError",
           "BadSampleError", "SegTransform", "build_dataset", "collate", "ensure_synthetic", "load_manifest",
           "parse_names", "read_image", "read_mask", "swap_dataset_prompts"]
