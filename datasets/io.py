"""Reading images and masks robustly, with errors that name the file and the fix.

Mask rule (stated in ``--help`` of the scripts and in docs/reliability.md):
- a mask is read as one channel: RGB(A) masks take the maximum over colour channels,
  palette masks use their palette colours, 16-bit masks are kept at 16 bits;
- masks whose values are only {0, 1} are taken as binary as they are;
- otherwise foreground = value >= 128 (>= 32768 when values exceed 255: 16-bit masks), so JPEG noise is ignored;
- a mask with several small integer labels (e.g. {0,1,2,3}) is a label map and is refused.

Medical files go through ``datasets.medical`` (docs/medical_files.md): DICOM (by name or preamble) and volumes
(NIfTI, MetaImage, NRRD) are windowed to 8 bits there, one frame or slice at a time (``frame``, ``slice``,
``axis``, ``window``: the reader choices a manifest record keeps); 16-bit and float PNG/TIFF are rescaled
explicitly (``window``, default min..max), never clamped at 255 as Pillow's ``convert("L")`` does.  Masks in
those files are sliced the same way, without a window.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image
Image.MAX_IMAGE_PIXELS = 20000 * 20000   # allow large medical images, still catch decompression bombs


class BadSampleError(ValueError):
    """A sample that cannot be used; the message names the file/record and what to do."""


def _open(path: str, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise BadSampleError(f"{what} file not found: {path} (check --data-root and the manifest's names)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadSampleError(f"cannot read {what} {path}: {type(e).__name__}: {e}. The file is corrupt or truncated: "
                             f"re-export it, or pass --on-bad-sample skip to leave it out") from None
    except Image.DecompressionBombError as e:
        raise BadSampleError(f"{what} {path} is too large to decode safely: {e}") from None


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def read_image(path: str, draft_size: int | None = None, frame: int | None = None, slice: int | None = None,
               axis: int | None = None, window=None) -> tuple[Image.Image, tuple[int, int]]:
    """Return an RGB PIL image and the original (height, width).

    ``draft_size`` lets JPEG decode at a reduced scale (at least ``draft_size`` px) for speed;
    the original size is still the file's size.  ``frame``/``slice``/``axis``/``window``: the reader choices of
    a medical file (module docstring); ``frame`` is also the page of a multi-page TIFF.
    """
    from .medical import MedicalFileError, is_medical, read_medical
    if is_medical(path):
        try:
            return _rgb_image(read_medical(path, frame=frame, slice=slice, axis=axis, window=window).pixels)
        except MedicalFileError as e:
            raise BadSampleError(str(e)) from None
    if slice is not None or axis is not None:
        raise BadSampleError(f"image {path} is not a volume: slice/axis do not apply (a record's reader options)")
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise BadSampleError(f"image file not found: {path} (check --data-root and the manifest's names)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadSampleError(f"cannot read image {path}: {e}. Re-export the file, "
                             f"or pass --on-bad-sample skip") from None
    orig_hw = (img.height, img.width)
    try:
        _seek(img, frame, path)
        if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L"):
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise BadSampleError(f"cannot decode image {path}: {type(e).__name__}: {e}. The file is corrupt or truncated: "
                             f"re-export it, or pass --on-bad-sample skip to leave it out") from None
    if img.mode in HIGH_DEPTH_MODES:  # 16-bit / float grey: rescaled by a stated window, never clamped
        from .medical import MedicalFileError, rescale_16bit
        try:
            return _rgb_image(rescale_16bit(np.asarray(img), path, window).pixels)
        except MedicalFileError as e:
            raise BadSampleError(str(e)) from None
    if window is not None:
        raise BadSampleError(f"image {path} is an 8-bit {img.mode} image: a window applies to DICOM, volumes and "
                             f"16-bit images only")
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, RGBA (alpha dropped), P, CMYK, YCbCr
    return img, orig_hw


def _rgb_image(pixels: np.ndarray) -> tuple[Image.Image, tuple[int, int]]:
    """An RGB PIL image and (height, width) from uint8 HxW or HxWx3 pixels."""
    img = Image.fromarray(np.ascontiguousarray(pixels))
    return (img if img.mode == "RGB" else img.convert("RGB")), tuple(pixels.shape[:2])


def _seek(img: Image.Image, frame: int | None, path: str) -> None:
    """Go to page ``frame`` of a multi-page file (TIFF); a one-page file takes only frame 0 or None."""
    if frame is None:
        return
    n = getattr(img, "n_frames", 1)
    if not 0 <= int(frame) < n:
        raise BadSampleError(f"{path} has {n} page(s); frame {frame} does not exist")
    img.seek(int(frame))


def mask_to_binary(arr: np.ndarray, path: str = "<array>", threshold: int | None = None) -> np.ndarray:
    """Binarise a mask array following the module's rule; returns bool HxW.

    The one binarisation rule of the project: ``read_mask`` and the dataset converters both use it.
    RGB(A) arrays take the maximum over the colour channels first.
    """
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # np.maximum is ~10x faster than .max(axis=2) here
        arr = np.maximum(np.maximum(arr[..., 0], arr[..., 1]), arr[..., 2])
    elif arr.ndim == 3 and arr.shape[2] in (1, 2):  # gray (+ alpha)
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise BadSampleError(f"mask {path} has shape {arr.shape}; expected a single-channel image")
    if arr.dtype == bool:
        return arr
    vmax = int(arr.max()) if arr.size else 0
    if vmax <= 1:
        return arr >= 1
    if threshold is None:
        threshold = 32768 if vmax > 255 else 128
    if vmax < threshold:
        values = np.unique(arr)
        if len(values) <= 16:
            raise BadSampleError(
                f"mask {path} has values {values.tolist()[:8]}: it looks like a label map, not a binary mask. "
                f"Save it as 0/255, or convert the release with `python -m datasets.prepare` (which decodes the "
                f"label maps of the datasets it knows)")
        raise BadSampleError(f"mask {path} has no value >= {threshold} (max {vmax}): it would be empty after "
                             f"binarising; save masks as 0/255 (or 0/1)")
    return arr >= threshold


def read_mask(path: str, threshold: int | None = None, frame: int | None = None, slice: int | None = None,
              axis: int | None = None) -> np.ndarray:
    """Read a mask file as bool HxW (see the module docstring for the rule).  ``frame``/``slice``/``axis``: one
    frame of a DICOM or multi-page TIFF mask, one slice of a mask volume, cut as the image is."""
    from .medical import MedicalFileError, is_medical, read_medical_mask
    if is_medical(path):
        try:
            values = read_medical_mask(path, frame=frame, slice=slice, axis=axis)
        except MedicalFileError as e:
            raise BadSampleError(str(e)) from None
        return mask_to_binary(values, path, threshold)
    if slice is not None or axis is not None:
        raise BadSampleError(f"mask {path} is not a volume: slice/axis do not apply (a record's reader options)")
    img = _open(path, "mask")
    if frame is not None:
        try:
            _seek(img, frame, path)
            img.load()
        except (OSError, EOFError) as e:
            raise BadSampleError(f"cannot read page {frame} of mask {path}: {e}") from None
    if img.mode == "P":
        img = img.convert("RGB")
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
        arr = np.asarray(img.convert("RGB"))
    elif img.mode == "1":
        arr = np.asarray(img).astype(np.uint8)
    elif img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        arr = arr.astype(np.uint16) if arr.max() <= 65535 else arr
    elif img.mode == "L":
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L"))
    return mask_to_binary(arr, path, threshold)
