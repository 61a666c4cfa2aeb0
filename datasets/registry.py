"""The one table of dataset names: name -> kind, class name, splits, converter, prompt family.

Every other list of datasets (the prompt templates, ``prepare``'s converters, ``--data`` help texts) is
derived from :data:`DATASETS`.  Multi-target datasets (CAMUS structures, CheXlocalize pathologies) name
their class per record; ``class_name`` is then the umbrella word.

User datasets (``python -m datasets.make_manifest``) are registered in ``<data_root>/datasets.json``
(:data:`USER_REGISTRY`); ``get_dataset``/``parse_names``/``dataset_names`` given a ``data_root`` also
look there, so ``train.py --data mydata`` needs no code edit.  A user dataset may not take a built-in name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

ALL_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    kind: str                     # imaging modality, in words
    class_name: str               # the target's name in prompts (P1)
    family: str                   # prompt-template family (datasets.prompt_templates)
    converter: str | None         # "module:function" of datasets.prepare's converter; None = made by code
    splits: tuple = ALL_SPLITS
    multi_target: bool = False    # one image has several records with different masks
    descriptions: tuple = ()      # general descriptions for P7..P9 (user datasets; built-ins: prompt_templates)


def _polyp(name: str, splits: tuple = ALL_SPLITS) -> DatasetInfo:
    return DatasetInfo("endoscopy", "polyp", "non_radiology", f"datasets.converters.polyp:convert_{name}", splits)


DATASETS: dict[str, DatasetInfo] = {
    "kvasir": _polyp("kvasir"),
    "clinicdb": _polyp("clinicdb"),
    "bkai": _polyp("bkai"),
    "etis": _polyp("etis", ("test",)),
    "colondb": _polyp("colondb", ("test",)),
    "cvc300": _polyp("cvc300", ("test",)),
    "isic": DatasetInfo("dermoscopy", "skin melanoma", "non_radiology", "datasets.converters.photo:convert_isic"),
    "dfu": DatasetInfo("photo", "foot ulcer", "non_radiology", "datasets.converters.photo:convert_dfu"),
    "camus": DatasetInfo("cardiac ultrasound", "cardiac structure", "camus",
                         "datasets.converters.camus:convert_camus", multi_target=True),
    "busi": DatasetInfo("breast ultrasound", "tumor", "busi", "datasets.converters.busi:convert_busi"),
    "chexlocalize": DatasetInfo("chest x-ray", "pathology", "chexlocalize",
                                "datasets.converters.chexlocalize:convert_chexlocalize", multi_target=True),
    "synthetic": DatasetInfo("synthetic shapes", "shape", "synthetic", None),
}


USER_REGISTRY = "datasets.json"   # <data_root>/datasets.json: {"datasets": {name: {...}}}
USER_FIELDS = {"kind": str, "class_name": str, "family": str, "splits": list, "multi_target": bool,
               "descriptions": list}


def user_registry_path(data_root: str) -> str:
    return os.path.join(data_root, USER_REGISTRY)


def user_datasets(data_root: str | None) -> dict[str, DatasetInfo]:
    """The datasets registered under ``data_root`` (empty without a registry file); errors name the file."""
    if not data_root:
        return {}
    path = user_registry_path(data_root)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"dataset registry {path} is unreadable ({e}); fix or delete it and rerun "
                         f"python -m datasets.make_manifest") from None
    entries = table.get("datasets") if isinstance(table, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"dataset registry {path} must be an object {{\"datasets\": {{name: {{...}}}}}}")
    out = {}
    for name, e in entries.items():
        where = f"dataset registry {path}, entry '{name}'"
        if name in DATASETS:
            raise ValueError(f"{where}: '{name}' is a built-in dataset name; rename the entry (and its folders)")
        if not isinstance(e, dict) or not isinstance(e.get("class_name"), str):
            raise ValueError(f"{where}: needs at least a 'class_name' string")
        for key, typ in USER_FIELDS.items():
            if key in e and not isinstance(e[key], typ):
                raise ValueError(f"{where}: '{key}' must be a {typ.__name__}")
        splits = tuple(e.get("splits", ALL_SPLITS))
        if not splits or set(splits) - set(ALL_SPLITS):
            raise ValueError(f"{where}: 'splits' must be a non-empty subset of {list(ALL_SPLITS)}, got {list(splits)}")
        out[name] = DatasetInfo(e.get("kind", "custom"), e["class_name"], e.get("family", "non_radiology"), None,
                                splits, e.get("multi_target", False), tuple(e.get("descriptions", ())))
    return out


def dataset_names(with_converter: bool = False, data_root: str | None = None) -> list[str]:
    names = [n for n, d in DATASETS.items() if d.converter or not with_converter]
    return names + ([] if with_converter else list(user_datasets(data_root)))


def get_dataset(name: str, data_root: str | None = None) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    user = user_datasets(data_root)
    if name not in user:
        mine = (f"; registered in {user_registry_path(data_root)}: {', '.join(user) or 'none'}" if data_root
                else "")
        raise ValueError(f"unknown dataset '{name}'; choose from: {', '.join(DATASETS)}{mine} (comma-separate to "
                         f"pool). Register your own folder with python -m datasets.make_manifest --images DIR "
                         f"--masks DIR --name {name} (docs/your_data.md)")
    return user[name]


def parse_names(data: str, data_root: str | None = None) -> list[str]:
    """``kvasir,clinicdb`` -> the names, each checked against the table (and ``data_root``'s registry)."""
    names = [n.strip() for n in data.split(",") if n.strip()]
    if not names:
        raise ValueError("--data is empty; name a dataset, e.g. --data kvasir")
    for n in names:
        get_dataset(n, data_root)
    return names
