"""Shared pieces of the dataset converters: the sample description, layout search, pairing, mask reading.

A converter turns a downloaded release into a ``Conversion``: a list of ``Sample`` (one output image
each) with one or more ``Target`` (one output binary mask and one manifest record each), the
unpaired files it met, and notes for the user. It reads but never writes; ``datasets.prepare`` does
the writing, the split and the manifests.

Conventions
-----------
* Output names are the names the paper's released manifests use (medvlsm ``data/<name>/anns/*.json``), so
  ``python -m datasets.import_manifests`` finds every file: an image keeps its source extension when it is
  JPEG or PNG (copied byte for byte); anything else (TIFF, MHD/raw, NIfTI, an array) is written as an 8-bit
  PNG. Masks are PNG 0/255 (``Target.mask_name``, by default ``<mask_stem>.png``), except that a release mask
  the paper names by its own file name (Kvasir-SEG's ``<id>.jpg``, BKAI's ``<id>.jpeg``) is copied byte for
  byte (``Target.copy_from``); the loader's one binarisation rule reads it.
* Mask binarisation (``binarise``): a boolean array is kept; an array whose values are only {0, 1}
  is taken as binary; otherwise foreground = value >= 128 for 8-bit data (>= 32768 for 16-bit data
  whose maximum exceeds 255), so JPEG noise and the faint background values of CVC-ClinicDB are
  ignored. RGB(A) masks take the maximum over the colour channels first. Label maps (CAMUS) and
  RGB class masks (BKAI) are decoded by their converters, not by this rule.
* ``split``: "train"/"val"/"test" (fixed by the release), "trainval" (official training part, to be
  divided into train and val by the seeded split) or ``None`` (seeded train/val/test split).
* ``group``: the unit of the seeded split (an image, or a patient for CAMUS / CheXlocalize), so no
  patient is in two splits.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
from PIL import Image

from ..io import BadSampleError, mask_to_binary

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
COPY_EXTS = (".jpg", ".jpeg", ".png")


class PrepareError(ValueError):
    """Bad input for a converter; the message names the file or folder and the fix."""


@dataclass
class Target:
    """One binary mask and its manifest record."""
    mask_stem: str                              # output mask name without ".png"
    load_mask: Callable[[], np.ndarray]         # -> bool HxW
    meta: dict = field(default_factory=dict)    # must contain "class_name"; more fields go into the record
    segment_id: int = 0
    source: str = ""                            # file named in error messages
    copy_from: str | None = None                # copy this release file as the mask, byte for byte
    mask_ext: str = ".png"                      # the output mask's extension (the copied file's, with copy_from)

    @property
    def mask_name(self) -> str:
        return self.mask_stem + self.mask_ext


ImageSource = Union[str, Callable[[], np.ndarray]]


@dataclass
class Sample:
    """One output image with its targets."""
    stem: str                   # output image stem (unique in the dataset)
    image: ImageSource          # a file path, or a loader returning uint8 HxW or HxWx3
    targets: list
    group: str = ""             # unit of the seeded split; defaults to the stem
    split: str | None = None    # see the module docstring
    source: str = ""            # file named in error messages


@dataclass
class Conversion:
    samples: list
    unpaired: list = field(default_factory=list)   # human-readable "what: path" lines
    notes: list = field(default_factory=list)      # things the user should know (ignored folders, ...)
    # split -> sub-folder of images/ and masks/ for that split's files (CAMUS: the paper's images/train and
    # images/test, whose releases reuse patient names); None = one flat folder
    split_folders: dict | None = None


# ----------------------------------------------------------------------------------------------- layout
def listing(folder: str, limit: int = 15) -> str:
    """A short description of what a folder holds, for "unknown layout" errors."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as e:
        return f"(cannot list {folder}: {e})"
    dirs = [e + "/" for e in entries if os.path.isdir(os.path.join(folder, e))]
    files = [e for e in entries if not os.path.isdir(os.path.join(folder, e))]

    def short(xs):
        return ", ".join(xs[:limit]) + (f", ... ({len(xs)} in all)" if len(xs) > limit else "") if xs else "none"
    return f"dirs: {short(dirs)}; files: {short(files)}"


def candidate_roots(src: str, depth: int = 2) -> list[str]:
    """``src`` and its sub-folders down to ``depth`` levels (archives often add a wrapper folder)."""
    out, frontier = [src], [src]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            try:
                subs = sorted(e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e)) and not e.startswith("."))
            except OSError:
                continue
            nxt += [os.path.join(d, e) for e in subs]
        out += nxt
        frontier = nxt
    return out


def find_dir(root: str, names: tuple) -> str | None:
    """The first sub-folder of ``root`` whose name matches one of ``names`` (case-insensitive)."""
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    lower = {e.lower(): e for e in entries if os.path.isdir(os.path.join(root, e))}
    for n in names:
        if n.lower() in lower:
            return os.path.join(root, lower[n.lower()])
    return None


def descend_same_name(folder: str) -> str:
    """Kaggle archives nest ``train/train/``: follow a single same-named sub-folder."""
    inner = os.path.join(folder, os.path.basename(folder.rstrip(os.sep)))
    return inner if os.path.isdir(inner) else folder


def unknown_layout(name: str, src: str, expected: str) -> PrepareError:
    return PrepareError(f"{name}: unknown layout in --src {src}.\n  expected: {expected}\n  found: {listing(src)}\n"
                        f"  Pass the folder that holds these (or its parent).")


def image_files(folder: str, exts: tuple = IMAGE_EXTS) -> dict[str, str]:
    """Map stem -> path of the image files in ``folder`` (not recursive); duplicate stems are an error."""
    out: dict[str, str] = {}
    for e in sorted(os.listdir(folder)):
        path = os.path.join(folder, e)
        stem, ext = os.path.splitext(e)
        if e.startswith(".") or not os.path.isfile(path) or ext.lower() not in exts:
            continue
        if stem in out:
            raise PrepareError(f"two files with the stem '{stem}' in {folder}: {os.path.basename(out[stem])} and {e}; "
                               f"remove one of them")
        out[stem] = path
    return out


def pair_by_stem(images: dict[str, str], masks: dict[str, str], mask_key: Callable[[str], str] = lambda s: s,
                 what: str = "") -> tuple[list[tuple[str, str, str]], list[str]]:
    """Pair images with masks: image stem ``s`` pairs with mask stem ``mask_key(s)``.

    Returns ``([(stem, image_path, mask_path)], unpaired)`` where ``unpaired`` lists each image
    without a mask and each mask without an image.
    """
    pairs, unpaired, used = [], [], set()
    for stem in sorted(images):
        key = mask_key(stem)
        if key in masks:
            pairs.append((stem, images[stem], masks[key]))
            used.add(key)
        else:
            unpaired.append(f"{what}image without mask: {images[stem]} (expected mask stem '{key}')")
    for key in sorted(set(masks) - used):
        unpaired.append(f"{what}mask without image: {masks[key]}")
    return pairs, unpaired


# ------------------------------------------------------------------------------------------------ masks
def binarise(arr: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Binary mask (bool HxW) by the project's one rule (``datasets.io.mask_to_binary``); errors name the file."""
    try:
        return mask_to_binary(arr, path)
    except BadSampleError as e:
        raise PrepareError(str(e)) from None


def read_array(path: str) -> np.ndarray:
    """Pixels of an image file as a numpy array (PIL formats); errors name the file."""
    try:
        with Image.open(path) as img:
            if img.mode == "P":
                img = img.convert("RGB")
            elif img.mode in ("1", "CMYK", "YCbCr", "LA", "PA"):
                img = img.convert("RGB" if img.mode != "1" else "L")
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise PrepareError(f"cannot read {path}: {type(e).__name__}: {e} (corrupt or truncated file?)") from None


def read_binary_mask(path: str) -> np.ndarray:
    return binarise(read_array(path), path)


def to_uint8(arr: np.ndarray, path: str = "<array>") -> np.ndarray:
    """An 8-bit image array (HxW or HxWx3) from any numeric array; other bit depths are min-max scaled."""
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise PrepareError(f"image {path} has shape {arr.shape}; expected a 2-D grey or RGB image")
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    if lo >= 0 and hi <= 255 and np.all(a == np.round(a)):
        return a.astype(np.uint8)
    return np.round((a - lo) / (hi - lo) * 255.0).astype(np.uint8)


def safe_stem(text: str) -> str:
    """File-system and shell friendly stem: "benign (12)" -> "benign_12"."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return s or "x"
