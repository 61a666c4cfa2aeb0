"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020).

Layout: ``benign/``, ``malignant/``, ``normal/`` (usually inside ``Dataset_BUSI_with_GT/``), each
holding ``<class> (<k>).png`` images with ``<class> (<k>)_mask.png`` and, for some images, extra
``<class> (<k>)_mask_1.png``, ``_mask_2.png`` (several tumours): all masks of an image are merged by
union. Output stems replace spaces and brackets: ``benign (12)`` -> ``benign_12``.

Records carry ``class_name`` "tumor" and ``tumor_type`` "benign" / "malignant" / "normal".
Normal images have empty masks (kept, bbox null); a normal image without any mask file gets an empty
mask (reported as a note). A benign/malignant image without a mask, or a mask without its image, is
unpaired (error by default, see ``--skip-unpaired``).

Output names are the paper's (its released manifests): ``benign (12).png`` -> ``images/12_benign.png`` and
``masks/12_benign.png``; a name of another pattern is made file-system safe (``safe_stem``).
"""
from __future__ import annotations

import os
import re

import numpy as np

from .common import (
    Conversion,
    PrepareError,
    Sample,
    Target,
    candidate_roots,
    find_dir,
    read_array,
    read_binary_mask,
    safe_stem,
    unknown_layout,
)

CLASSES = ("benign", "malignant", "normal")
MASK_RE = re.compile(r"^(?P<base>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)
NAME_RE = re.compile(r"^(?P<cls>[a-z]+) \((?P<k>\d+)\)$", re.IGNORECASE)


def output_stem(stem: str) -> str:
    """The paper's name of a BUSI image: ``benign (12)`` -> ``12_benign``."""
    m = NAME_RE.match(stem.strip())
    return f"{int(m.group('k'))}_{m.group('cls').lower()}" if m else safe_stem(stem)


def union_mask(paths: list[str]) -> np.ndarray:
    out = None
    for p in paths:
        m = read_binary_mask(p)
        if out is not None and m.shape != out.shape:
            raise PrepareError(f"BUSI mask {p} is {m.shape[1]}x{m.shape[0]} but {paths[0]} is "
                               f"{out.shape[1]}x{out.shape[0]} (WxH); the masks of one image must have one size")
        out = m if out is None else (out | m)
    return out


def convert_busi(src: str) -> Conversion:
    root = None
    for r in candidate_roots(src):
        if all(find_dir(r, (c,)) for c in ("benign", "malignant")):
            root = r
            break
    if root is None:
        raise unknown_layout("busi", src, "benign/, malignant/ and normal/ with '<class> (k).png' and "
                             "'<class> (k)_mask.png' (the Dataset_BUSI_with_GT folder)")
    samples, unpaired, notes = [], [], []
    for tumor_type in CLASSES:
        folder = find_dir(root, (tumor_type,))
        if folder is None:
            notes.append(f"no {tumor_type}/ folder in {root}")
            continue
        images, masks = {}, {}
        for e in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(e)
            if ext.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                continue
            m = MASK_RE.match(stem)
            if m:
                masks.setdefault(m.group("base"), []).append(os.path.join(folder, e))
            else:
                images[stem] = os.path.join(folder, e)
        for base in sorted(set(masks) - set(images)):
            unpaired += [f"mask without image: {p}" for p in masks[base]]
        for stem in sorted(images):
            img = images[stem]
            paths = sorted(masks.get(stem, []), key=lambda p: (len(p), p))  # _mask before _mask_1, _mask_2
            if not paths and tumor_type != "normal":
                unpaired.append(f"image without mask: {img} (expected '{stem}_mask.png')")
                continue
            if paths:
                load = (lambda ps=paths: union_mask(ps))
            else:
                notes.append(f"normal image without mask file: {img} (empty mask used)")
                load = (lambda p=img: np.zeros(read_array(p).shape[:2], bool))
            out = output_stem(stem)
            meta = {"class_name": "tumor", "tumor_type": tumor_type, "source_name": os.path.basename(img)}
            if len(paths) > 1:
                meta["n_mask_files"] = len(paths)
            samples.append(Sample(stem=out, image=img, source=img,
                                  targets=[Target(out, load, meta, 0, paths[0] if paths else img)]))
    return Conversion(samples, unpaired, notes)
