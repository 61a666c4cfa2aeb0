"""CAMUS (Cardiac Acquisitions for Multi-structure Ultrasound Segmentation, Leclerc et al. 2019).

Layout: per-patient folders ``patientXXXX/`` (anywhere down to three levels below ``--src``: the
2019 release has ``training/`` and ``testing/``, the 2023 public release ``database_nifti/``) with
``patientXXXX_{2CH,4CH}_{ED,ES}.{mhd,nii.gz,nii}`` images, ``..._gt`` label maps (0 background,
1 LV cavity, 2 myocardium, 3 LA cavity) and ``Info_2CH.cfg`` / ``Info_4CH.cfg`` ("Key: value" lines
with Sex, Age, ImageQuality, ED, ES, ...). Read with SimpleITK; images are written as 8-bit PNG.

One image gives three records, one per structure, each with its own binary mask
``<image stem>_{lv,myo,la}.png``. Record fields: ``class_name`` (structure), ``patient``,
``view`` ("two-chamber"/"four-chamber"), ``cycle`` ("end of the diastole"/"end of the systole"),
``sex`` ("female"/"male"), ``age`` (int years), ``image_quality`` ("good"/"medium"/"poor"),
``view_code`` ("2CH"), ``cycle_code`` ("ED"), ``label`` (1..3). Missing metadata is ``None``.

Split: the official patient lists when a ``subgroup_training.txt`` / ``subgroup_validation.txt`` /
``subgroup_testing.txt`` set is found below ``--src`` (2023 release, ``database_split/``); otherwise a
seeded patient-level split with the paper's proportions (400/50/50 patients = 4800/600/600 records).
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
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}


def read_volume(path: str) -> np.ndarray:
    """The 2-D pixel array of an MHD/NIfTI file (SimpleITK; singleton axes dropped)."""
    import SimpleITK as sitk
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise PrepareError(f"cannot read {path} with SimpleITK: {msg} (for .mhd the .raw file must sit beside it)") \
            from None
    arr = np.squeeze(arr)
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


def convert_camus(src: str) -> Conversion:
    patients = []
    for root in candidate_roots(src, depth=3):
        if PATIENT_RE.match(os.path.basename(root)):
            patients.append(root)
    if not patients:
        raise unknown_layout("camus", src, "patientXXXX/ folders with patientXXXX_2CH_ED.mhd (or .nii.gz), "
                             "patientXXXX_2CH_ED_gt.mhd, ..., Info_2CH.cfg, Info_4CH.cfg")
    names = [os.path.basename(p) for p in patients]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PrepareError(f"camus: patient folders found twice under {src}: {dupes[:5]}; pass the folder of one "
                           f"release only (e.g. training/ or database_nifti/)")
    split_of = official_split(src)
    notes = ["split: official subgroup_*.txt lists" if split_of else
             "split: no subgroup_training/validation/testing.txt found, seeded patient-level split"]
    samples, unpaired = [], []
    for folder in sorted(patients):
        patient = os.path.basename(folder)
        split = None
        if split_of is not None:
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
                targets = [Target(f"{stem}_{short}", _label_loader(gt, label),
                                  {"class_name": name, "patient": patient, "view": view, "cycle": cycle, **meta,
                                   "view_code": view_code, "cycle_code": cycle_code, "label": label},
                                  label - 1, gt)
                           for label, short, name in STRUCTURES]
                samples.append(Sample(stem=stem, image=(lambda p=img: to_uint8(read_volume(p), p)), targets=targets,
                                      group=patient, split=split, source=img))
    return Conversion(samples, unpaired, notes)
