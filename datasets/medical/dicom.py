"""DICOM files to 8-bit 2-D images with pydicom (one image per frame), and the refusals that name the file.

Per frame, in this order:

1. decoding by pydicom's own decoders and the plugins installed with it: uncompressed little- and big-endian,
   deflated, RLE Lossless (pydicom itself), JPEG baseline/extended 8-bit and JPEG 2000 (Pillow), JPEG-LS
   (pyjpegls, installed with highdicom).  YBR colour comes out as RGB.  A syntax without a decoder, or a pixel
   stream shorter than Rows x Columns x frames says so;
2. colour images (RGB, YBR, PALETTE COLOR through its palette) are scaled from their bit depth to 8 bits;
3. grey images: the modality LUT (RescaleSlope/RescaleIntercept, or the Modality LUT table; per frame from the
   functional groups of enhanced multi-frame files), then the window of :mod:`.intensity` (the file's
   WindowCenter/WindowWidth or VOI LUT by default), then MONOCHROME1 is inverted so that bright is dense as in
   MONOCHROME2.

Pixel spacing (row, column) in mm comes from PixelSpacing (or the functional groups' PixelMeasuresSequence);
ImagerPixelSpacing (at the detector) and ultrasound regions are not taken as patient spacing: None then.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .intensity import apply_window, resolve_window, scale_bits

DICOM_EXTS = (".dcm", ".dicom", ".dic")
RASTER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")


def is_dicom(path: str) -> bool:
    """A ``.dcm``/``.dicom``/``.dic`` name, or a file with the DICOM preamble (``DICM`` at byte 128) under another
    name (series exported as ``IM0001``); files named as raster images (``.png``, ``.jpg``, ...) are not opened."""
    lower = path.lower()
    if lower.endswith(DICOM_EXTS):
        return True
    if lower.endswith(RASTER_EXTS):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dataset(path: str, error=ValueError, pixels: bool = True):
    """The pydicom Dataset of ``path``; ``error`` (one line naming the file) when it is not DICOM, is cut short or
    (``pixels``) holds no image.  A pixel stream cut inside an encapsulated sequence is reported as truncated
    (pydicom drops such an element with only a warning)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError:
        raise error(f"DICOM file not found: {path}") from None
    except InvalidDicomError as e:
        raise error(f"{path} is not a DICOM file ({e})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise error(f"cannot read DICOM {path}: {type(e).__name__}: {e} (the file is corrupt or truncated)") from None
    cut = [w for w in caught if "End of file reached" in str(w.message)]
    if pixels and cut:
        raise error(f"DICOM {path} is truncated: the file ends inside its pixel data ({cut[0].message})")
    if pixels and not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = f"Modality {ds.get('Modality', '?')}, SOP class {_sop_class_name(ds)}"
        hint = (" and it has Rows/Columns: its pixel data is missing or the file is truncated" if "Rows" in ds
                else ": not an image (a structured report, an RT plan, ...)")
        raise error(f"DICOM {path} has no pixel data ({kind}){hint}")
    return ds


def _sop_class_name(ds) -> str:
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return getattr(uid, "name", None) or str(uid or "?")


def frame_count(ds) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _functional(ds, frame: int | None, sequence: str, keyword: str):
    """``keyword`` at the top level, else in the frame's or the shared functional group ``sequence``."""
    if keyword in ds:
        return ds[keyword].value
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if sequence in group and group[sequence].value and keyword in group[sequence].value[0]:
            return group[sequence].value[0][keyword].value
    return None


def _first(value):
    """The first of a multi-valued element (WindowCenter may hold several windows)."""
    if value is None:
        return None
    try:
        return float(value[0]) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def pixel_spacing(ds, frame: int | None = None) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing (top level or functional groups), else None."""
    value = _functional(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def file_window(ds, frame: int | None = None) -> dict | None:
    """The file's own window: WindowCenter/Width (first of several) with its VOI LUT Function, or the first VOI
    LUT table; None when it gives neither."""
    center = _first(_functional(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_functional(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width >= 1:
        function = _functional(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
        return {"name": "file", "center": center, "width": width, "function": str(function).upper()}
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return {"name": "file", "lut": 0}
    return None


def _decode(ds, path: str, frame: int | None, error) -> np.ndarray:
    """The frame's stored pixel array (YBR converted to RGB); ``error`` for a missing decoder or a short stream."""
    from pydicom.pixels import pixel_array
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
    try:
        return pixel_array(ds, index=frame)
    except ValueError as e:
        if "less than expected" in str(e) or "truncated" in str(e).lower():
            raise error(f"DICOM {path}: the pixel data is truncated ({str(e).split(' - ')[0]})") from None
        raise error(f"DICOM {path}: cannot decode its pixel data ({name}): {e}") from None
    except (RuntimeError, NotImplementedError) as e:
        reason = " ".join(str(e).split())
        raise error(f"DICOM {path}: no installed decoder can read its transfer syntax {name} ({reason}); install a "
                    f"plugin for it (e.g. pylibjpeg with pylibjpeg-libjpeg) or convert the file to an uncompressed "
                    f"syntax (gdcmconv --raw, dcmdjpeg)") from None
    except (AttributeError, KeyError, TypeError, EOFError) as e:
        raise error(f"DICOM {path}: cannot decode its pixel data ({name}): {type(e).__name__}: {e}") from None


def modality_values(ds, arr: np.ndarray, frame: int | None) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units): the Modality LUT table if any, else
    RescaleSlope/RescaleIntercept (top level or the frame's PixelValueTransformationSequence)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut
        return apply_modality_lut(arr, ds).astype(np.float64)
    slope = _functional(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    values = arr.astype(np.float64)
    if slope is not None and float(slope) != 1.0:
        values = values * float(slope)
    if intercept is not None and float(intercept) != 0.0:
        values = values + float(intercept)
    return values


def read_dicom(path: str, frame: int | None = None, window=None, error=ValueError) -> tuple[np.ndarray, tuple | None,
                                                                                            dict, dict]:
    """One frame of a DICOM file -> (uint8 HxW or HxWx3, spacing (row, col) mm or None, choices, info).

    ``frame`` is required for a multi-frame file (0-based); ``window`` as in :mod:`.intensity` (grey images
    only).  ``choices`` are the keyword arguments that give the same pixels again (``frame``, ``window`` resolved
    to numbers); ``info`` says what was found (photometric interpretation, inverted, rescale, transfer syntax)."""
    ds = read_dataset(path, error)
    n = frame_count(ds)
    if frame is None and n > 1:
        raise error(f"DICOM {path} has {n} frames: read one with frame=0..{n - 1} (make_manifest makes one record "
                    f"per frame)")
    if frame is not None and not 0 <= int(frame) < n:
        raise error(f"DICOM {path} has {n} frame(s); frame {frame} does not exist")
    index = int(frame) if n > 1 else None
    arr = _decode(ds, path, index, error)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    info = {"format": "dicom", "photometric": photometric, "transfer_syntax": getattr(syntax, "name", str(syntax)),
            "modality": str(ds.get("Modality", "")), "frames": n,
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")), "series_uid": str(ds.get("SeriesInstanceUID", ""))}
    choices: dict = {"frame": int(frame)} if n > 1 else {}
    spacing = pixel_spacing(ds, index)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        rgb = apply_color_lut(arr, ds)
        bits = 8 if rgb.dtype == np.uint8 else int(ds.RedPaletteColorLookupTableDescriptor[2])
        return scale_bits(rgb, bits), spacing, choices, info
    if arr.ndim == 3:
        if photometric not in COLOUR:
            raise error(f"DICOM {path}: {arr.shape[2]} samples per pixel with photometric interpretation "
                        f"{photometric}, which this reader does not convert")
        return scale_bits(arr, int(ds.get("BitsStored", 8))), spacing, choices, info
    values = modality_values(ds, arr, index)
    window = resolve_window(window, values, file_window(ds, index), path)
    if "lut" in window:
        from pydicom.pixels import apply_voi_lut
        out = apply_voi_lut(np.round(values).astype(np.int64), ds, index=int(window["lut"]), prefer_lut=True)
        bits = int(ds.VOILUTSequence[int(window["lut"])].LUTDescriptor[2])
        pixels = scale_bits(np.asarray(out), bits)
    else:
        pixels = apply_window(values, window)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    info["inverted"] = photometric == "MONOCHROME1"
    choices["window"] = window
    return pixels, spacing, choices, info


def read_dicom_mask(path: str, frame: int | None = None, error=ValueError) -> np.ndarray:
    """The stored values of one frame of a DICOM mask (no rescale, no window), for the mask rule of datasets.io."""
    ds = read_dataset(path, error)
    n = frame_count(ds)
    if frame is None and n > 1:
        raise error(f"DICOM mask {path} has {n} frames: read one with frame=0..{n - 1}")
    return _decode(ds, path, int(frame) if n > 1 else None, error)


def dicom_series_key(path: str) -> str:
    """The SeriesInstanceUID of a DICOM file (header only), or its folder when it has none."""
    try:
        ds = read_dataset(path, pixels=False)
        return str(ds.get("SeriesInstanceUID") or os.path.dirname(os.path.abspath(path)))
    except ValueError:
        return os.path.dirname(os.path.abspath(path))
