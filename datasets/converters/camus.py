"""CAMUS (Cardiac Acquisitions for Multi-structure Ultrasound Segmentation, Leclerc et al. 2019).

Layout: per-patient folders ``patientXXXX/`` (anywhere down to three levels below ``--src``: the
2019 release has ``training/`` and ``testing/``, the 2023 public release ``database_nifti/``) with
``patientXXXX_{2CH,4CH}_{ED,ES}.{mhd,nii.gz,nii}`` images, ``..._gt`` label maps (0 background,
1 LV cavity, 2 myocardium, 3 LA cavity) and ``Info_2CH.cfg`` / ``Info_4CH.cfg`` ("Key: value" lines
with Sex, Age, ImageQuality, ED, ES, ...). Read as stored by ``datasets.medical.read_voxels`` (nibabel for NIfTI,
SimpleITK for MHD); images are written as 8-bit PNG.

One image gives three records, one per structure, each with its own binary mask. Names are the paper's
(its released manifests and ``configs/datamodule/*/camus.yaml``): train and val images live in
``images/train/``, test images in ``images/test/`` (the 2019 release reuses patient names in ``training/``
and ``testing/``), and the mask of label k is ``masks/<part>/mask_<k>/<image stem>_gt.png``; a record's
``img_name`` is ``train/patient0001_2CH_ED.png``, its ``mask_name`` ``train/mask_1/patient0001_2CH_ED_gt.png``.
Record fields: ``class_name`` (structure), ``patient``, ``release_part`` ("training"/"testing"),
``view`` ("two-chamber"/"four-chamber"), ``cycle`` ("end of the diastole"/"end of the systole"),
``sex`` ("female"/"male"), ``age`` (int years), ``image_quality`` ("good"/"medium"/"poor"),
``view_code`` ("2CH"), ``cycle_code`` ("ED"), ``label`` (1..3). Missing metadata is ``None``.

Split: the official patient lists when a ``subgroup_training.txt`` / ``subgroup_validation.txt`` /
``subgroup_testing.txt`` set is found below ``--src`` (2023 release, ``database_split/``). With the 2019
release's ``training/`` and ``testing/`` folders, as the paper: ``testing/`` is the test split, and val is the
first 50 training patients by name (patient0001-patient0050, the patients of the paper's released
``val.json``; scaled as 50/450 of another number), train the rest. Otherwise a seeded patient-level split
with the paper's proportions (400/50/50 patients = 4800/600/600 records).
"""
from __future__ import annotations

import functools
import os
import re

import numpy as np

from .common import Conversion, PrepareError, Sample, Target, candidate_roots, to_uint8, unknown_layout

STRUCTURES = ((1, "lv", "left ventricular cavity"), (2, "myo", "myocardium"), (3, "la", "left atrium cavity"))
VIEWS = {"2CH": "two-chamber", "4CH": "four-chamber"}
CYCLES = {"ED": "end of the diastole", "ES": "end of the systole"}
EXTS = (".nii.gz", ".mhd", ".nii")
PATIENT_RE = re.compile(r"^patient\d+$")
#: split -> folder under images/ and masks/ (the paper's camus.yaml: images/train for train and val)
SPLIT_FOLDERS = {"train": "train", "val": "train", "test": "test"}
PAPER_VAL_PATIENTS = (50, 450)   # the paper's val: the first 50 of the 450 training patients
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}


def read_volume(path: str) -> np.ndarray:
    """The 2-D pixel array of an MHD/NIfTI file as stored (the shared reader ``datasets.medical.read_voxels``:
    nibabel for NIfTI, SimpleITK for MHD; singleton axes dropped; no reorientation, so the images keep the
    pixel layout of the paper's PNGs)."""
    from ..medical import read_voxels
    arr = read_voxels(path, PrepareError)
    if arr.ndim != 2:
        raise PrepareError(f"{path} has shape {arr.shape}; expected a single 2-D frame (ED/ES image or _gt map)")
    return arr


def read_cfg(path: str) -> dict:
    """``Key: value`` lines of an Info_*.cfg file."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if ":" in line:
                k, v = line.split(":", 1)
                out[k.strip()] = v.strip()
    return out


def patient_meta(cfg: dict) -> dict:
    sex = {"F": "female", "M": "male"}.get(cfg.get("Sex", "").strip().upper()[:1])
    try:
        age = int(float(cfg["Age"]))
    except (KeyError, ValueError):
        age = None
    quality = cfg.get("ImageQuality", "").strip().lower() or None
    return {"sex": sex, "age": age, "image_quality": quality}


def _find(folder: str, stem: str) -> str | None:
    for ext in EXTS:
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def official_split(src: str) -> dict[str, str] | None:
    """patient -> split from the subgroup_*.txt lists, or None when they are not in ``src``."""
    for root in candidate_roots(src, depth=3):
        paths = {s: os.path.join(root, f) for s, f in SPLIT_FILES.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            out = {}
            for split, p in paths.items():
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        name = line.strip()
                        if name:
                            if name in out:
                                raise PrepareError(f"camus: patient {name} is listed in two split files ({p})")
                            out[name] = split
            return out
    return None


@functools.lru_cache(maxsize=1)  # the three structures of one image are loaded one after another
def _label_map(gt_path: str) -> np.ndarray:
    gt = read_volume(gt_path)
    values = set(np.unique(gt).tolist())
    if not values <= {0, 1, 2, 3}:
        raise PrepareError(f"camus: {gt_path} has labels {sorted(values)[:10]}; expected 0..3 "
                           f"(0 background, 1 LV cavity, 2 myocardium, 3 LA cavity)")
    return gt


def _label_loader(gt_path: str, label: int):
    return lambda: _label_map(gt_path) == label


def release_part(src: str, folder: str) -> str:
    """'testing' for a patient folder below a ``testing/`` (or ``test*``) folder of the release, else 'training'."""
    rel = os.path.relpath(os.path.dirname(folder), src).replace("\\", "/").lower().split("/")
    return "testing" if any(p.startswith("test") for p in rel) else "training"


def paper_trainval(patients: list[str]) -> dict[str, str]:
    """The paper's train/val of the 2019 training patients: val = the first ones by name (module docstring)."""
    val, total = PAPER_VAL_PATIENTS
    n_val = val if len(patients) == total else int(round(len(patients) * val / total))
    order = sorted(patients)
    return {p: ("val" if i < n_val else "train") for i, p in enumerate(order)}


def convert_camus(src: str) -> Conversion:
    patients = []
    for root in candidate_roots(src, depth=3):
        if PATIENT_RE.match(os.path.basename(root)):
            patients.append(root)
    if not patients:
        raise unknown_layout("camus", src, "patientXXXX/ folders with patientXXXX_2CH_ED.mhd (or .nii.gz), "
                             "patientXXXX_2CH_ED_gt.mhd, ..., Info_2CH.cfg, Info_4CH.cfg")
    names = [(release_part(src, p), os.path.basename(p)) for p in patients]
    dupes = sorted({n for part, n in names if names.count((part, n)) > 1})
    if dupes:
        raise PrepareError(f"camus: patient folders found twice under {src}: {dupes[:5]}; pass the folder of one "
                           f"release only (e.g. training/ + testing/ of 2019, or database_nifti/)")
    split_of = official_split(src)
    two_parts = split_of is None and any(part == "testing" for part, _ in names)
    if split_of:
        notes = ["split: official subgroup_*.txt lists"]
    elif two_parts:
        split_of = paper_trainval([n for part, n in names if part == "training"])
        notes = ["split: the release's testing/ is test; val = the first "
                 f"{sum(v == 'val' for v in split_of.values())} training patients by name (the paper's val.json), "
                 "train the rest"]
    else:
        notes = ["split: no subgroup_training/validation/testing.txt found, seeded patient-level split"]
    samples, unpaired = [], []
    for folder in sorted(patients):
        patient, part = os.path.basename(folder), release_part(src, folder)
        split = None
        if two_parts:
            split = "test" if part == "testing" else split_of[patient]
        elif split_of is not None:
            split = split_of.get(patient)
            if split is None:
                notes.append(f"{patient} is in none of the official split lists: not used")
                continue
        for view_code, view in VIEWS.items():
            cfg_path = os.path.join(folder, f"Info_{view_code}.cfg")
            meta = patient_meta(read_cfg(cfg_path)) if os.path.isfile(cfg_path) else patient_meta({})
            if not os.path.isfile(cfg_path):
                notes.append(f"{cfg_path} missing: sex, age, image quality unknown for {patient} {view_code}")
            for cycle_code, cycle in CYCLES.items():
                stem = f"{patient}_{view_code}_{cycle_code}"
                img, gt = _find(folder, stem), _find(folder, stem + "_gt")
                if img is None and gt is None:
                    continue
                if img is None or gt is None:
                    have, miss = (img, stem + "_gt") if gt is None else (gt, stem)
                    unpaired.append(f"{'image without mask' if gt is None else 'mask without image'}: {have} "
                                    f"(no {miss}{{{','.join(EXTS)}}})")
                    continue
                targets = [Target(f"mask_{label}/{stem}_gt", _label_loader(gt, label),
                                  {"class_name": name, "patient": patient, "release_part": part, "view": view,
                                   "cycle": cycle, **meta, "view_code": view_code, "cycle_code": cycle_code,
                                   "label": label, "structure": short},
                                  label - 1, gt)
                           for label, short, name in STRUCTURES]
                samples.append(Sample(stem=stem, image=(lambda p=img: to_uint8(read_volume(p), p)), targets=targets,
                                      group=f"{part}/{patient}", split=split, source=img))
    return Conversion(samples, unpaired, notes, split_folders=dict(SPLIT_FOLDERS))
