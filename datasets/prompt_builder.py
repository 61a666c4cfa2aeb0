"""Prompt attributes and P0..P9 of manifest records: the library half of ``make_prompts.py``.

``make_prompts.py`` (a script) and ``python -m datasets.make_manifest`` both build prompts here, so a
dataset registered from a user's folder gets exactly the prompts of the paper's datasets.

* :func:`family_for` / :func:`build_prompts`: the template family and prompts of a dataset name, built-in
  (``datasets.prompt_templates``) or registered under a data root (``<data_root>/datasets.json``, family
  ``non_radiology``: class name and general descriptions from its registry entry).
* :func:`attributes_from`: attributes of one record from its decoded mask (and image): number, size,
  location, shape, colour, bbox (``datasets.attributes``) + class name and metadata (:func:`metadata_attributes`).
* :func:`record_attributes` / :func:`process_manifest`: the same, reading the files of a prepared dataset.
"""
from __future__ import annotations

import os

import numpy as np

from . import prompt_templates as T
from .attributes import mask_attributes
from .io import BadSampleError, read_image, read_mask
from .registry import DATASETS, DatasetInfo, get_dataset

#: Record fields copied (normalised) into the attributes, by family.
METADATA_FIELDS = {"camus": ("view", "cycle", "sex", "age", "image_quality"),
                   "chexlocalize": ("view", "pathology"),
                   "busi": ("tumor_type",),
                   "non_radiology": ()}

#: P7..P9 descriptions of a user dataset whose class is not one of the paper's and that gave none.
GENERIC_DESCRIPTIONS = ("a region of interest in the image",)


# ----------------------------------------------------------------------------- dataset names
def _user_info(dataset: str, data_root: str | None, info: DatasetInfo | None) -> DatasetInfo:
    """``info`` (a dataset being registered) or the registry entry of ``dataset`` under ``data_root``."""
    return info if info is not None else get_dataset(dataset, data_root)  # "unknown dataset ..." for names nowhere


def family_for(dataset: str, data_root: str | None = None, info: DatasetInfo | None = None) -> str:
    """Template family of a built-in dataset, or of one registered under ``data_root`` (or described by
    ``info``); clear error otherwise."""
    if dataset in DATASETS:
        return T.family_of(dataset)  # clear error for built-ins without templates (synthetic)
    family = _user_info(dataset, data_root, info).family
    if family not in METADATA_FIELDS:
        raise ValueError(f"dataset {dataset!r} (registered under {data_root}) has family {family!r}; "
                         f"prompt templates exist for {', '.join(METADATA_FIELDS)}")
    return family


def default_class_name(dataset: str, data_root: str | None = None, info: DatasetInfo | None = None) -> str | None:
    if dataset in T.CLASS_NAMES:
        return T.CLASS_NAMES[dataset]
    return None if dataset in DATASETS else _user_info(dataset, data_root, info).class_name


def default_descriptions(class_name: str) -> tuple:
    """General descriptions for a class: those of the paper's dataset with that class name (polyp, skin
    melanoma, foot ulcer), else :data:`GENERIC_DESCRIPTIONS`."""
    key = class_name.strip().lower()
    for name, info in DATASETS.items():
        if info.class_name.lower() == key and name in T.GENERAL_DESCRIPTIONS:
            return tuple(T.GENERAL_DESCRIPTIONS[name])
    return GENERIC_DESCRIPTIONS


def build_prompts(dataset: str, attrs: dict, data_root: str | None = None, info: DatasetInfo | None = None) -> dict:
    """P0..P9 of one record from its attributes (``prompt_templates.build_prompts`` for built-in names)."""
    if dataset in DATASETS:
        return T.build_prompts(dataset, attrs)
    family = family_for(dataset, data_root, info)
    if family == "busi":
        return T.busi_prompts(attrs)
    if family == "camus":
        return T.camus_prompts(attrs)
    if family == "chexlocalize":
        return T.chexlocalize_prompts(attrs)
    info = _user_info(dataset, data_root, info)
    full = dict(attrs, class_name=attrs.get("class_name") or info.class_name,
                general_description=attrs.get("general_description") or info.descriptions or GENERIC_DESCRIPTIONS)
    return T.non_radiology_prompts(full, dataset)


# ----------------------------------------------------------------------------- metadata
_VIEW = {"2ch": "two-chamber", "2-chamber": "two-chamber", "two-chamber": "two-chamber",
         "two chamber": "two-chamber", "4ch": "four-chamber", "4-chamber": "four-chamber",
         "four-chamber": "four-chamber", "four chamber": "four-chamber", "frontal": "frontal",
         "ap": "frontal", "pa": "frontal", "lateral": "lateral", "ll": "lateral"}
_CYCLE = {"ed": "end of the diastole", "diastole": "end of the diastole",
          "end-diastole": "end of the diastole", "end diastole": "end of the diastole",
          "end of the diastole": "end of the diastole", "es": "end of the systole",
          "systole": "end of the systole", "end-systole": "end of the systole",
          "end systole": "end of the systole", "end of the systole": "end of the systole"}
_SEX = {"f": "female", "female": "female", "woman": "female", "m": "male", "male": "male",
        "man": "male"}


def _lookup(table: dict, value, field: str, where: str) -> str:
    key = str(value).strip().lower()
    if key not in table:
        raise ValueError(f"{where}: unknown {field} {value!r}; expected one of {sorted(set(table))}")
    return table[key]


def _canonical_pathology(name: str) -> str:
    key = str(name).replace("_", " ").strip().lower()
    for p in T.CHEX_PATHOLOGIES:
        if p.lower() == key:
            return p
    return str(name).strip()


def metadata_attributes(record: dict, dataset: str, where: str, data_root: str | None = None,
                        info: DatasetInfo | None = None) -> dict:
    """Class name and metadata attributes of a record, normalised to the template vocabulary."""
    family = family_for(dataset, data_root, info)
    out = {}
    name = record.get("class_name")
    if family == "chexlocalize":
        own = record.get("pathology")
        name = name or (own if isinstance(own, str) else None)
        if not name:
            raise ValueError(f"{where}: CheXlocalize record needs 'class_name' (its pathology)")
        out["class_name"] = _canonical_pathology(name)
    elif family == "camus":
        if not name:
            raise ValueError(f"{where}: CAMUS record needs 'class_name' (e.g. 'myocardium')")
        out["class_name"] = str(name).strip().lower()
    else:
        default = default_class_name(dataset, data_root, info)
        if not name and not default:
            raise ValueError(f"{where}: record needs 'class_name'")
        out["class_name"] = str(name).strip() if name else default
    for field in METADATA_FIELDS[family]:
        value = record.get(field)
        if field == "pathology":  # the other pathologies present in the image
            value = next((record[k] for k in ("pathologies", "pathologies_present", "other_pathologies")
                          if isinstance(record.get(k), list)), value if isinstance(value, list) else None)
            if value is not None:
                value = [_canonical_pathology(v) for v in value]
        elif field == "tumor_type" and value is None:  # BUSI: fall back on the file name
            stem = str(record.get("img_name", "")).lower()
            value = next((t for t in ("benign", "malignant", "normal") if t in stem), None)
        if value is None or value == "":
            continue
        if field == "view":
            value = _lookup(_VIEW, value, field, where)
        elif field == "cycle":
            value = _lookup(_CYCLE, value, field, where)
        elif field == "sex":
            value = _lookup(_SEX, value, field, where)
        elif field == "age":
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: age {value!r} is not a whole number of years") from None
        elif field in ("image_quality", "tumor_type"):
            value = str(value).strip().lower()
        out[field] = value
    return out


# ----------------------------------------------------------------------------- VQA (optional)
VQA_QUESTIONS = {"shape": "What is the shape of the {name}?", "colour": "What is the color of the {name}?"}


def vqa_attributes(vqa, image, class_name: str, family: str) -> dict:
    """Shape (and colour for photographic images) answered by a visual-question-answering pipeline."""
    keys = ("shape", "colour") if family == "non_radiology" else ("shape",)
    out = {}
    for key in keys:
        answers = vqa(image=image, question=VQA_QUESTIONS[key].format(name=class_name), top_k=1)
        answer = answers[0] if isinstance(answers, list) else answers
        text = str(answer.get("answer", "")).strip().lower() if isinstance(answer, dict) else ""
        out[key] = text or None
    return out


# ----------------------------------------------------------------------------- per record
def attributes_from(mask: np.ndarray, image, record: dict, dataset: str, where: str, data_root: str | None = None,
                    vqa=None, info: DatasetInfo | None = None) -> dict:
    """Attributes of one record from its decoded bool mask and RGB image (PIL or array; None when the family
    needs no image): mask rules + (photographic) colour + metadata (+ VQA).  ``info``: the entry of a dataset
    not registered yet (``datasets.make_manifest``)."""
    family = family_for(dataset, data_root, info)
    rgb = np.asarray(image) if image is not None else None  # datasets.io.read_image gives RGB
    attrs = mask_attributes(mask, rgb if family == "non_radiology" else None)
    attrs.update(metadata_attributes(record, dataset, where, data_root, info))
    if vqa is not None and attrs["count"] > 0:
        attrs.update(vqa_attributes(vqa, image, attrs["class_name"], family))
    return attrs


def record_attributes(record: dict, dataset: str, data_root: str, where: str, vqa=None) -> dict:
    """Attributes of one record of the prepared dataset ``<data_root>/<dataset>/{images,masks}``."""
    family = family_for(dataset, data_root)
    for key in ("img_name", "mask_name"):
        if not record.get(key):
            raise ValueError(f"{where}: record has no {key!r}")
    mask_path = os.path.join(data_root, dataset, "masks", record["mask_name"])
    mask = read_mask(mask_path)
    image = None
    if family == "non_radiology" or vqa is not None:
        img_path = os.path.join(data_root, dataset, "images", record["img_name"])
        image, (h, w) = read_image(img_path)
        if (h, w) != mask.shape:
            raise BadSampleError(f"{where}: image {img_path} is {w}x{h} but mask {mask_path} is "
                                 f"{mask.shape[1]}x{mask.shape[0]}; re-run datasets.prepare")
    return attributes_from(mask, image, record, dataset, where, data_root, vqa)


def with_prompts(record: dict, attrs: dict, dataset: str, data_root: str | None = None,
                 info: DatasetInfo | None = None) -> dict:
    """A copy of ``record`` with ``attributes``, rebuilt ``prompts`` and (when absent) ``bbox``."""
    new = dict(record)
    new["attributes"] = attrs
    new["prompts"] = build_prompts(dataset, attrs, data_root, info)
    if new.get("bbox") is None and attrs["bbox"] is not None:
        new["bbox"] = attrs["bbox"]
    return new


def process_manifest(records: list, dataset: str, data_root: str, path: str, vqa=None) -> list:
    """New records with ``attributes`` and rebuilt ``prompts`` (input records are not changed)."""
    if not isinstance(records, list):
        raise ValueError(f"{path}: a manifest must be a JSON list of records")
    out = []
    for i, record in enumerate(records):
        where = f"{path} record {i} ({record.get('img_name', '?')})"
        out.append(with_prompts(record, record_attributes(record, dataset, data_root, where, vqa), dataset,
                                data_root))
    return out
