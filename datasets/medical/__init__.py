"""One reader for medical images (DICOM, NIfTI, MetaImage/NRRD, 16-bit PNG/TIFF) and the writers that put
masks back in their source's geometry.  The formats, libraries and rules: docs/medical_files.md.

Reading gives a :class:`MedicalImage`: 8-bit pixels, the pixel spacing in mm when the file states it, and the
choices that made the pixels (``frame`` or ``slice``/``axis``, the ``window`` resolved to numbers).  The
choices are keyword arguments of :func:`read_medical`: a manifest record keeps them (``"reader"``), and the
training loader and ``predict.py`` pass them back, so both see the same pixels.

    img = read_medical("ct.dcm")                          # the file's window, else percentiles
    img = read_medical("scan.nii.gz", slice=40, axis=2, window="ct-abdomen")
    again = read_medical("scan.nii.gz", **img.choices)    # the same pixels

- :mod:`.dicom`: pydicom; rescale, MONOCHROME1, multi-frame, YBR/palette to RGB, truncated or undecodable files.
- :mod:`.volume`: NIfTI (nibabel) and ITK files (SimpleITK) as RAS+ canonical slices; the slicing rule.
- :mod:`.intensity`: windows (the file's, CT presets, ``L/W``, ``auto`` percentiles, ``range``).
- :mod:`.writers`: :func:`write_nifti_mask`, :func:`write_dicom_seg` (highdicom).

Every refusal is a :class:`MedicalFileError` (a ValueError) whose one-line message names the file and the
reason; ``datasets.io`` passes it on as its ``BadSampleError`` (``--on-bad-sample skip`` applies).  This package
imports nothing of the toolkit: ``datasets.io`` is built on it, not the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dicom import DICOM_EXTS, frame_count, is_dicom, read_dataset, read_dicom, read_dicom_mask
from .intensity import (
    AUTO_PERCENTILES,
    WINDOW_HELP,
    WINDOW_NAMES,
    WINDOW_PRESETS,
    apply_window,
    check_window,
    resolve_window,
)
from .volume import (
    AXES,
    VOLUME_EXTS,
    canonical_volume,
    check_axis,
    check_same_grid,
    is_volume,
    read_voxels,
    slice_count,
    volume_slice,
)
from .writers import write_dicom_seg, write_nifti_mask

__all__ = ["image_position", "MedicalImage", "MedicalFileError", "read_medical", "read_medical_mask", "count_images",
           "is_medical",
           "rescale_16bit", "reader_options", "write_nifti_mask", "write_dicom_seg", "read_voxels",
           "check_same_grid", "WINDOW_PRESETS", "WINDOW_NAMES", "WINDOW_HELP", "AUTO_PERCENTILES", "AXES",
           "MEDICAL_EXTS", "is_dicom", "is_volume", "read_dataset"]

MEDICAL_EXTS = DICOM_EXTS + VOLUME_EXTS
#: the keyword arguments of read_medical that a manifest record keeps under "reader"
READER_KEYS = ("frame", "slice", "axis", "window")


class MedicalFileError(ValueError):
    """A medical file that cannot be used; the message names it and says why."""


@dataclass
class MedicalImage:
    """One 2-D image as the toolkit sees it."""
    pixels: np.ndarray                        # uint8, HxW (grey) or HxWx3 (colour)
    spacing: tuple[float, float] | None       # (row, column) in mm; None when the file does not state it
    choices: dict                             # read_medical(path, **choices) gives these pixels again
    info: dict = field(default_factory=dict)  # what the reader found: format, photometric, inverted, uids, ...
    path: str = ""

    @property
    def rgb(self) -> np.ndarray:
        """The pixels as uint8 HxWx3 (grey repeated), as ``datasets.io.read_image`` gives images."""
        return self.pixels if self.pixels.ndim == 3 else np.repeat(self.pixels[..., None], 3, axis=2)


def is_medical(path: str) -> bool:
    """Read by this module rather than by Pillow: DICOM (by name or by its preamble) and volumes (by name).
    16-bit PNG/TIFF are found when Pillow opens them (``datasets.io``)."""
    return is_volume(path) or is_dicom(path)


def image_position(record: dict) -> tuple:
    """Where in its file a record's image is: (frame, slice, axis) of its ``reader`` options, all None for a
    plain 2-D file.  The slices of one volume share ``img_name`` and differ here."""
    reader = record.get("reader") or {}
    return tuple(reader.get(k) for k in ("frame", "slice", "axis"))


def reader_options(record: dict | None, mask: bool = False) -> dict:
    """The reader's keyword arguments kept in a manifest record (``record["reader"]``); for a mask only the
    frame/slice/axis (a mask is never windowed)."""
    opts = dict((record or {}).get("reader") or {})
    unknown = set(opts) - set(READER_KEYS)
    if unknown:
        raise ValueError(f"record reader options {sorted(unknown)} unknown; expected some of {READER_KEYS}")
    return {k: v for k, v in opts.items() if not (mask and k == "window")}


def rescale_16bit(arr: np.ndarray, path: str, window=None) -> MedicalImage:
    """A 16-bit (or 32-bit / float) grey PNG/TIFF array to 8 bits by ``window`` (default ``range``: min..max,
    nothing clipped); never Pillow's clamping at 255."""
    values = np.asarray(arr)
    if values.ndim != 2:
        raise MedicalFileError(f"{path}: a {values.dtype} image of shape {values.shape}; expected one grey channel")
    try:
        window = resolve_window(window, values, None, path, default="range")
    except ValueError as e:
        raise MedicalFileError(str(e)) from None
    return MedicalImage(apply_window(values, window), None, {"window": window},
                        {"format": "16-bit", "dtype": str(values.dtype)}, path)


def count_images(path: str, axis=None, frame: int | None = None) -> int:
    """How many 2-D images ``path`` holds: DICOM frames, or volume slices along ``axis`` (of ``frame`` when 4-D)."""
    if is_volume(path):
        return slice_count(path, axis, frame, MedicalFileError)
    return frame_count(read_dataset(path, MedicalFileError, pixels=False))


def read_medical(path: str, frame: int | None = None, slice: int | None = None, axis: int | None = None,
                 window=None) -> MedicalImage:
    """One 2-D image of a DICOM file (``frame`` for multi-frame files) or of a volume (``slice`` along ``axis``,
    default 2 = axial; ``frame`` on the 4th axis of a 4-D volume), windowed to 8 bits (``window``: a name of
    :data:`WINDOW_NAMES`, ``L/W``, or a dict that an earlier read returned)."""
    try:
        check_window(window)
    except ValueError as e:
        raise MedicalFileError(f"{path}: {e}") from None
    if is_volume(path):
        return _read_volume_slice(path, frame, slice, axis, window)
    if slice is not None:
        raise MedicalFileError(f"{path} is not a volume: it has frames, not slices (use frame=)")
    pixels, spacing, choices, info = read_dicom(path, frame, window, MedicalFileError)
    return MedicalImage(pixels, spacing, choices, info, path)


def _read_volume_slice(path, frame, index, axis, window) -> MedicalImage:
    try:
        axis = check_axis(axis)
    except ValueError as e:
        raise MedicalFileError(f"{path}: {e}") from None
    values, volume, spacing = volume_slice(path, index, axis, frame, MedicalFileError)
    try:  # percentiles/range of the whole volume, so that every slice is mapped alike
        window = resolve_window(window, volume, None, path)
    except ValueError as e:
        raise MedicalFileError(str(e)) from None
    index = 0 if index is None else int(index)
    choices = {"slice": index, "axis": axis, "window": window}
    if frame is not None:
        choices["frame"] = int(frame)
    info = {"format": "nifti" if path.lower().endswith((".nii", ".nii.gz")) else "itk", "orientation": "RAS+",
            "view": AXES[axis], "shape": list(volume.shape)}
    return MedicalImage(apply_window(values, window), spacing, choices, info, path)


def read_medical_mask(path: str, frame: int | None = None, slice: int | None = None, axis: int | None = None
                      ) -> np.ndarray:
    """The stored values of one 2-D mask of a DICOM file or a volume, sliced exactly as :func:`read_medical`
    slices images (no window); ``datasets.io.mask_to_binary`` then applies the mask rule."""
    if is_volume(path):
        try:
            axis = check_axis(axis)
        except ValueError as e:
            raise MedicalFileError(f"{path}: {e}") from None
        return volume_slice(path, slice, axis, frame, MedicalFileError)[0]
    return read_dicom_mask(path, frame, MedicalFileError)


def same_grid(image: str, mask: str, frame: int | None = None) -> None:
    """:func:`check_same_grid` with this module's error class."""
    check_same_grid(image, mask, frame, MedicalFileError)


__all__ += ["same_grid", "canonical_volume", "apply_window", "resolve_window", "READER_KEYS"]
