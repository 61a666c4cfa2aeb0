"""From stored values (Hounsfield units, MR signal, 16-bit counts) to 8-bit pixels, by a window that is named.

A window is chosen by name and resolved to numbers; the numbers are what a manifest record keeps, so the
training loader and ``predict.py`` map the same values to the same pixels:

- ``file``: the file's own window (DICOM WindowCenter/WindowWidth with its VOI LUT Function, or its VOI LUT
  table); the default for a DICOM file that has one.
- a CT preset (Hounsfield units, level/width as Radiopaedia's "Windowing (CT)" article gives them):
  ``ct-abdomen`` L50/W400 (-150..250, also BiomedParse's abdomen window), ``ct-lung`` L-600/W1500
  (-1350..150; BiomedParse uses -1000..1000 instead), ``ct-bone`` L400/W1800 (-500..1300), ``ct-brain``
  L40/W80 (0..80).
- ``L/W`` such as ``40/400``: a level and width of your own.
- ``auto``: the 0.5th..99.5th percentiles of the values (BiomedParse's clipping of non-CT images); the default
  where the file gives no window.  For a volume the percentiles are those of the whole volume (every slice is
  mapped alike), for a DICOM file those of the frame read.
- ``range``: the minimum..maximum of the values; nothing is clipped.  The default for 16-bit PNG/TIFF.

Values outside a window become 0 or 255: that is what a window is, and the record says which window it was.
Nothing is clamped without a window being named: a 16-bit image is never cut at 255 (Pillow's ``convert("L")``
does that, and turns a 16-bit CT mostly white).
"""
from __future__ import annotations

import re

import numpy as np

#: CT windows in Hounsfield units, (level, width); source in the module docstring.
WINDOW_PRESETS = {"ct-abdomen": (50.0, 400.0), "ct-lung": (-600.0, 1500.0), "ct-bone": (400.0, 1800.0),
                  "ct-brain": (40.0, 80.0)}
AUTO_PERCENTILES = (0.5, 99.5)
WINDOW_NAMES = ("file", "auto", "range", *WINDOW_PRESETS)
WINDOW_HELP = (f"intensity window to 8 bits: file (the DICOM's own), {', '.join(WINDOW_PRESETS)}, LEVEL/WIDTH "
               f"(e.g. 40/400), auto (percentiles {AUTO_PERCENTILES[0]}..{AUTO_PERCENTILES[1]}) or range (min..max); "
               f"default: the file's window when it has one, else auto (range for 16-bit PNG/TIFF)")
_LEVEL_WIDTH = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*[/,]\s*(\d+(?:\.\d+)?)\s*$")


def check_window(spec) -> None:
    """Refuse a window that is not one of :data:`WINDOW_NAMES`, ``L/W`` or a resolved dict (a ValueError)."""
    if spec is None or isinstance(spec, dict) or spec in WINDOW_NAMES or _LEVEL_WIDTH.match(str(spec)):
        return
    raise ValueError(f"unknown window {spec!r}; use {', '.join(WINDOW_NAMES)} or LEVEL/WIDTH such as 40/400")


def resolve_window(spec, values: np.ndarray, file_window: dict | None, where: str, default: str = "auto") -> dict:
    """The window ``spec`` (name, ``L/W``, or a dict made here earlier) as numbers for ``values``.

    ``file_window``: the file's own window as a dict (``{"name": "file", "center", "width", "function"}`` or
    ``{"name": "file", "lut": 0}``), or None.  ``spec`` None means ``file`` when there is one, else ``default``.
    """
    check_window(spec)
    if isinstance(spec, dict):
        return dict(spec)
    if spec is None:
        spec = "file" if file_window else default
    if spec == "file":
        if not file_window:
            raise ValueError(f"{where}: --window file, but the file gives no window (WindowCenter/WindowWidth or VOI "
                             f"LUT); use auto, range, a preset ({', '.join(WINDOW_PRESETS)}) or LEVEL/WIDTH")
        return dict(file_window)
    if spec in WINDOW_PRESETS or _LEVEL_WIDTH.match(str(spec)):
        level, width = WINDOW_PRESETS.get(spec) or map(float, _LEVEL_WIDTH.match(str(spec)).groups())
        return {"name": spec, "low": level - width / 2, "high": level + width / 2}
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return {"name": spec, "low": 0.0, "high": 0.0}
    if spec == "range":
        return {"name": "range", "low": float(finite.min()), "high": float(finite.max())}
    lo, hi = np.percentile(finite, AUTO_PERCENTILES)
    return {"name": "auto", "percentiles": list(AUTO_PERCENTILES), "low": float(lo), "high": float(hi)}


def apply_window(values: np.ndarray, window: dict) -> np.ndarray:
    """uint8 pixels of ``values`` through ``window`` (a dict of :func:`resolve_window` with low/high, or a DICOM
    center/width with its VOI LUT Function: DICOM PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT,
    SIGMOID)).  A window of zero width (a constant image under ``auto``) gives 0 up to it and 255 above."""
    x = np.asarray(values, dtype=np.float64)
    if "center" in window:
        c, w = float(window["center"]), float(window["width"])
        function = str(window.get("function") or "LINEAR").upper()
        if function == "SIGMOID":
            y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / max(w, 1e-9)))
        elif function == "LINEAR_EXACT":
            y = (x - c) / max(w, 1e-9) + 0.5
        else:  # LINEAR: the window spans c - 0.5 - (w - 1) / 2 .. c - 0.5 + (w - 1) / 2
            y = (x - (c - 0.5)) / max(w - 1.0, 1e-9) + 0.5
    else:
        lo, hi = float(window["low"]), float(window["high"])
        y = (x - lo) / (hi - lo) if hi > lo else (x > hi).astype(np.float64)
    y = np.nan_to_num(y, nan=0.0)
    return np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    """uint8 from unsigned ``bits``-bit samples (colour images with more than 8 bits): v * 255 / (2**bits - 1)."""
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    top = float(2 ** int(bits) - 1)
    return np.round(np.clip(arr.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8)
