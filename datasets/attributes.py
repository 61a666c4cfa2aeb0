"""Image-derived prompt attributes: pure functions of a binary mask (and the RGB image under it).

Every rule below is a fixed, documented threshold so that the prompt set is reproducible and can
be inspected with ``python make_prompts.py --data NAME --stats --dry-run``.

Conventions
-----------
* ``mask``: 2-D array, foreground where ``mask > 0`` (callers binarise files with ``>= 128``).
* ``image``: H x W x 3 uint8 RGB array of the same height and width as the mask.
* Targets are the connected components (8-connectivity) that are not *specks*: a component is a
  speck if it has fewer than ``MIN_COMPONENT_PIXELS`` pixels or less than
  ``SPECK_FRACTION_OF_LARGEST`` of the largest component's area. Targets are ordered by area,
  largest first; per-target lists (``size``, ``location``, ``area_fraction``) follow that order.
* Number: ``len(targets)`` in words, "one" ... "five", then "many"; an empty mask gives "no".
* Size (per target), by the target's area divided by the image area:
  small < ``SIZE_SMALL_MAX`` (5 %) <= medium < ``SIZE_MEDIUM_MAX`` (20 %) <= large.
* Location (per target): the centroid in a 3 x 3 grid of equal thirds; rows top / (middle) /
  bottom, columns left / (middle) / right, giving "top left", "top", "top right", "left",
  "center", "right", "bottom left", "bottom", "bottom right".
* Shape (of the largest target), first rule that matches:
  1. solidity (area / convex hull area) < ``SHAPE_MIN_SOLIDITY`` -> "irregular" (concave outline);
  2. extent (area / bounding-box area) >= ``SHAPE_RECT_EXTENT`` -> "rectangular" (box-like;
     a disc has extent pi/4 = 0.785);
  3. smoothness < ``SHAPE_MIN_SMOOTHNESS`` -> "irregular" (ragged outline); smoothness is the
     circularity 4 pi area / perimeter^2 (Crofton perimeter) divided by the circularity of an
     ellipse with the same axis ratio, so elongated but smooth outlines are not "irregular";
  4. axis ratio (minor / major axis of the fitted ellipse) >= ``SHAPE_ROUND_AXIS_RATIO`` ->
     "round", otherwise "oval".
* Colour (all target pixels): each pixel's HSV is mapped onto the HSV cone
  (x, y, z) = (S V cos H, S V sin H, V); the mean point is the "mean HSV" (hue averaged on the
  circle, weighted by saturation and value); the nearest entry of ``COLOUR_PALETTE`` (named sRGB
  reference colours mapped the same way) gives the colour name.
* Bounding box: ``[x1, y1, x2, y2]`` in pixels, inclusive min/max column and row of all
  foreground pixels (specks included).
* Empty mask: number "no", count 0, and size, location, shape, colour, bbox are ``None``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure

from .prompt_templates import location_word

MIN_COMPONENT_PIXELS = 20
SPECK_FRACTION_OF_LARGEST = 0.05

SIZE_SMALL_MAX = 0.05
SIZE_MEDIUM_MAX = 0.20

SHAPE_MIN_SOLIDITY = 0.80
SHAPE_RECT_EXTENT = 0.90
SHAPE_MIN_SMOOTHNESS = 0.80
SHAPE_ROUND_AXIS_RATIO = 0.75

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")
MANY = "many"


#: Named reference colours (sRGB 0-255) for the nearest-colour rule.
COLOUR_PALETTE = {
    "red": (200, 30, 30),
    "pink": (230, 150, 160),
    "orange": (230, 130, 40),
    "brown": (130, 80, 40),
    "yellow": (220, 200, 60),
    "green": (50, 160, 60),
    "blue": (40, 70, 190),
    "purple": (120, 50, 150),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
}

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_bool(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return mask > 0


def target_components(mask) -> list[np.ndarray]:
    """Boolean masks of the targets (non-speck components), largest first."""
    fg = _as_bool(mask)
    labels, n = ndimage.label(fg, structure=_EIGHT_CONNECTED)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    largest = areas.max()
    keep = [i for i in np.argsort(-areas, kind="stable")
            if areas[i] >= MIN_COMPONENT_PIXELS and areas[i] >= SPECK_FRACTION_OF_LARGEST * largest]
    if not keep:  # only specks: the mask still has a target, use the largest speck
        keep = [int(np.argmax(areas))]
    return [labels == (i + 1) for i in keep]


def number_word(count: int) -> str:
    """0 -> "no", 1..5 -> "one".."five", above -> "many"."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else MANY


def size_word(area_fraction: float) -> str:
    """Size class of a target from its share of the image area (see module docstring)."""
    if area_fraction < SIZE_SMALL_MAX:
        return "small"
    if area_fraction < SIZE_MEDIUM_MAX:
        return "medium"
    return "large"


def shape_measures(component) -> dict:
    """Solidity, extent, circularity and axis ratio of one binary component."""
    comp = _as_bool(component)
    props = measure.regionprops(comp.astype(np.uint8))[0]
    area = float(props.area)
    perimeter = float(measure.perimeter_crofton(comp, directions=4))
    circularity = min(4 * np.pi * area / perimeter ** 2, 1.0) if perimeter > 0 else 1.0
    major = float(props.axis_major_length)
    ratio = float(props.axis_minor_length) / major if major > 0 else 1.0
    return {"solidity": float(props.solidity), "extent": float(props.extent),
            "circularity": float(circularity), "axis_ratio": ratio,
            "smoothness": float(min(circularity / ellipse_circularity(ratio), 1.0))}


def ellipse_circularity(axis_ratio: float) -> float:
    """4 pi area / perimeter^2 of an ellipse with minor/major axis ratio ``axis_ratio``
    (Ramanujan's perimeter approximation); 1 for a circle."""
    a, b = 1.0, max(float(axis_ratio), 1e-6)
    perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    return 4 * np.pi * (np.pi * a * b) / perimeter ** 2


def shape_word(component) -> str:
    """round / oval / irregular / rectangular by the rule in the module docstring."""
    m = shape_measures(component)
    if m["solidity"] < SHAPE_MIN_SOLIDITY:
        return "irregular"
    if m["extent"] >= SHAPE_RECT_EXTENT:
        return "rectangular"
    if m["smoothness"] < SHAPE_MIN_SMOOTHNESS:
        return "irregular"
    return "round" if m["axis_ratio"] >= SHAPE_ROUND_AXIS_RATIO else "oval"


def _rgb_to_cone(rgb) -> np.ndarray:
    """N x 3 RGB (0-255) -> N x 3 points (S V cos H, S V sin H, V) of the HSV cone."""
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1), 0.0)
    r, g, b = rgb.T
    safe = np.where(delta > 0, delta, 1)
    hue = np.select([delta == 0, mx == r, mx == g],
                    [0.0, ((g - b) / safe) % 6, (b - r) / safe + 2],
                    (r - g) / safe + 4) * (np.pi / 3)
    chroma = sat * mx
    return np.stack([chroma * np.cos(hue), chroma * np.sin(hue), mx], axis=1)


def mean_hsv(image, mask) -> tuple[float, float, float]:
    """Mean (hue in degrees, saturation, value) of the pixels under the mask (cone average)."""
    pts = _rgb_to_cone(np.asarray(image)[_as_bool(mask)])
    x, y, v = pts.mean(axis=0)
    hue = float(np.degrees(np.arctan2(y, x)) % 360)
    sat = float(np.hypot(x, y) / v) if v > 0 else 0.0
    return hue, sat, float(v)


_PALETTE_NAMES = list(COLOUR_PALETTE)
_PALETTE_CONE = _rgb_to_cone(list(COLOUR_PALETTE.values()))


def colour_word(image, mask) -> str | None:
    """Nearest palette colour (HSV-cone distance) to the mean colour under the mask."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"image must be H x W x 3 RGB, got shape {image.shape}")
    fg = _as_bool(mask)
    if image.shape[:2] != fg.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {fg.shape} differ in size")
    if not fg.any():
        return None
    mean_pt = _rgb_to_cone(image[..., :3][fg]).mean(axis=0)
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE_CONE - mean_pt) ** 2).sum(axis=1)))]


def bounding_box(mask) -> list[int] | None:
    """[x1, y1, x2, y2] inclusive of all foreground pixels, or None for an empty mask."""
    fg = _as_bool(mask)
    if not fg.any():
        return None
    rows, cols = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def mask_attributes(mask, image=None) -> dict:
    """All mask-derived attributes of one record (colour only when ``image`` is given).

    Returns ``{"count", "number", "size", "location", "area_fraction", "shape", "colour",
    "bbox"}``; ``size``, ``location`` and ``area_fraction`` are per-target lists (largest
    first); empty masks give count 0, number "no" and ``None`` for the others.
    """
    fg = _as_bool(mask)
    height, width = fg.shape
    comps = target_components(fg)
    out = {"count": len(comps), "number": number_word(len(comps)), "size": None,
           "location": None, "area_fraction": None, "shape": None, "colour": None,
           "bbox": bounding_box(fg)}
    if not comps:
        return out
    fractions, locations = [], []
    for comp in comps:
        fractions.append(float(comp.sum()) / (height * width))
        cy, cx = ndimage.center_of_mass(comp)
        locations.append(location_word(cy, cx, height, width))
    out["area_fraction"] = [round(f, 6) for f in fractions]
    out["size"] = [size_word(f) for f in fractions]
    out["location"] = locations
    out["shape"] = shape_word(comps[0])
    if image is not None:
        out["colour"] = colour_word(image, fg)
    return out
