"""Checking an image/mask pair once, by the rules of :mod:`datasets.io`: the one validation that
``python -m datasets.make_manifest`` and ``python -m datasets.prepare`` share.

A pair is usable when
- the image decodes completely (a truncated or corrupt file is refused, never copied);
- the mask decodes and is binary or binarisable (``datasets.io.mask_to_binary``: {0, 1}, or >= 128 for
  8-bit masks, >= 32768 for 16-bit ones; a label map such as {0, 1, 2, 3} is refused);
- the mask has its image's size;
- the mask is not empty, unless empty masks are allowed (``--allow-empty``; BUSI normal images).

Every refusal is a :class:`PairError` whose message names the file and the fix and whose ``reason`` is
one of :data:`REASONS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .io import BadSampleError, mask_to_binary, read_image, read_mask

REASONS = ("image", "mask", "size", "empty")
_LOADER_HINTS = (", or pass --on-bad-sample skip to leave it out", ", or pass --on-bad-sample skip")


def _without_loader_hint(e: Exception) -> str:
    """The loader's hint (--on-bad-sample skip) does not apply here: the pair is left out anyway."""
    message = str(e)
    for hint in _LOADER_HINTS:
        message = message.replace(hint, "")
    return message


class PairError(BadSampleError):
    """A pair that cannot be used; ``reason`` is "image", "mask", "size" or "empty"."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class CheckedPair:
    image: Image.Image | np.ndarray   # RGB PIL image (from a file) or the array given
    mask: np.ndarray                  # bool HxW
    size: tuple                       # (height, width)

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


def check_image(image, name: str | None = None) -> tuple[Image.Image | np.ndarray, tuple[int, int]]:
    """Decode ``image`` (a file path, decoded in full; or a uint8 HxW / HxWx3 array) -> (image, (h, w))."""
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or not image.size:
            raise PairError(f"image {name or '<array>'} has shape {image.shape}; expected a grey or RGB image",
                            "image")
        return image, tuple(image.shape[:2])
    try:
        return read_image(str(image))
    except BadSampleError as e:
        raise PairError(_without_loader_hint(e), "image") from None


def check_mask(mask, size: tuple | None = None, allow_empty: bool = True, name: str | None = None,
               image_name: str | None = None) -> np.ndarray:
    """Decode and binarise ``mask`` (a file path, or an array) -> bool HxW; checks its size against the image's
    ``size`` (h, w) and, unless ``allow_empty``, that it has a foreground pixel."""
    name = name or (mask if isinstance(mask, str) else "<array>")
    try:
        arr = mask_to_binary(np.asarray(mask), name) if isinstance(mask, np.ndarray) else read_mask(str(mask))
    except BadSampleError as e:
        raise PairError(_without_loader_hint(e), "mask") from None
    if size is not None and arr.shape != tuple(size):
        (h, w), (mh, mw) = size, arr.shape
        raise PairError(f"mask {name} is {mw}x{mh} (WxH) but its image {image_name or '<image>'} is {w}x{h}; "
                        f"a mask must have its image's size: fix or remove this pair", "size")
    if not allow_empty and not arr.any():
        raise PairError(f"mask {name} is empty (no foreground pixel): fix it, remove the pair, or keep images "
                        f"without a target with --allow-empty", "empty")
    return arr


def check_pair(image, mask, allow_empty: bool = False, image_name: str | None = None,
               mask_name: str | None = None) -> CheckedPair:
    """Check one pair (see the module docstring); raises :class:`PairError`."""
    image_name = image_name or (image if isinstance(image, str) else None)
    img, size = check_image(image, image_name)
    arr = check_mask(mask, size, allow_empty, mask_name, image_name)
    return CheckedPair(img, arr, size)
