"""Synthetic referring-segmentation data: the embedded default dataset.

Each image (96-128 px per side, textured background) holds 2-3 objects with
different shapes (circle, square, triangle, star), colours and sizes.  Every
object gets one record, so an image appears once per object; the record's mask is
that object and its prompts name it, built like the paper's templates with
class = shape name.  A prompt of another record of the same image names another
object, so the right answer is a different mask: the text matters.

Generated deterministically (seeded) on first use and written as PNG files plus
manifests, so it goes through the same loader as real data.
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from util.io import write_json_atomic

from .manifest import load_manifest
from .prompt_templates import location_word

SHAPES = {  # class name -> (shape adjective used as the "shape" attribute, general descriptions)
    "circle": ("round", ["a shape with no corners", "a perfectly round figure", "a closed curve of equal radius",
                         "a disc drawn in one colour", "a smooth ring-like outline that is filled"]),
    "square": ("boxy", ["a shape with four equal sides", "a figure with four right angles", "a boxy block",
                        "a tile with straight edges", "a quadrilateral with equal sides"]),
    "triangle": ("pointed", ["a shape with three corners", "a figure with three straight sides",
                             "a wedge with a sharp tip", "a three-sided polygon", "an arrowhead-like figure"]),
    "star": ("spiky", ["a shape with five points", "a figure with sharp spikes", "a five-pointed polygon",
                       "a sparkle-like figure", "a shape with points around a centre"]),
}
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
           "purple": (150, 60, 190)}
SIZES = {"small": (7, 10), "medium": (12, 16), "large": (18, 23)}  # radius range in px
COUNTS = {"train": 1000, "val": 100, "test": 100}


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(rot + k * math.pi / 2 + math.pi / 4), math.sin(rot + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
        return [(cx + r * x, cy + r * y) for x, y in pts]
    if shape == "triangle":
        return [(cx + r * math.cos(rot + k * 2 * math.pi / 3), cy + r * math.sin(rot + k * 2 * math.pi / 3))
                for k in range(3)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else 0.45 * r) * math.cos(rot + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else 0.45 * r) * math.sin(rot + k * math.pi / 5)) for k in range(10)]
    raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, rot, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=fill)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    base = rng.uniform(60, 160, size=3)
    low = rng.normal(0, 1, size=(h // 8 + 2, w // 8 + 2, 3))
    low = np.asarray(Image.fromarray(((low - low.min()) / (np.ptp(low) + 1e-6) * 255).astype(np.uint8))
                     .resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0 - 0.5
    fine = rng.normal(0, 10, size=(h, w, 3))
    arr = np.clip(base + 50 * low + fine, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def prompts_for(obj: dict) -> dict:
    """P0..P9 for one object, following the paper's template order (class = shape name)."""
    cls, adj, col, size, loc = obj["shape"], SHAPES[obj["shape"]][0], obj["colour"], obj["size"], obj["location"]
    descs = SHAPES[cls][1]
    base5 = f"one {size} {col} {adj} {cls}"
    where = f"located in the {loc} of the image"
    return {
        "p0": "",
        "p1": cls,
        "p2": f"{adj} {cls}",
        "p3": f"{col} {adj} {cls}",
        "p4": f"{size} {col} {adj} {cls}",
        "p5": base5,
        "p6": f"{base5}, {where}",
        "p7": [f"{cls}, which is {d}" for d in descs],
        "p8": [f"{base5}, which is {d}" for d in descs],
        "p9": [f"{base5}, which is {d} {where}" for d in descs],
    }


def make_image(rng: np.random.Generator) -> tuple[Image.Image, list[dict], list[np.ndarray]]:
    w, h = int(rng.integers(96, 129)), int(rng.integers(96, 129))
    img = _background(rng, w, h)
    n = int(rng.integers(2, 4))
    shapes = rng.choice(list(SHAPES), size=n, replace=False)
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    sizes = rng.choice(list(SIZES), size=n, replace=False)  # n is 2 or 3: sizes differ within an image
    objs, masks, placed = [], [], []
    for shape, colour, size in zip(shapes, colours, sizes):
        r = float(rng.uniform(*SIZES[size]))
        for _ in range(200):
            cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
            if all(math.hypot(cx - px, cy - py) > r + pr + 3 for px, py, pr in placed):
                break
        else:
            return make_image(rng)  # could not place: start again (deterministic given rng)
        placed.append((cx, cy, r))
        rot = float(rng.uniform(0, 2 * math.pi))
        m = Image.new("L", (w, h), 0)
        _draw(ImageDraw.Draw(m), str(shape), cx, cy, r, rot, 255)
        shade = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 12, 3), 0, 255).astype(int)
        _draw(ImageDraw.Draw(img), str(shape), cx, cy, r, rot, tuple(int(v) for v in shade))
        mask = np.asarray(m) >= 128
        ys, xs = np.nonzero(mask)
        objs.append({"shape": str(shape), "colour": str(colour), "size": str(size),
                     "location": location_word(ys.mean(), xs.mean(), h, w),
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]})
        masks.append(mask)
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img, objs, masks


def generate(data_root: str, prompts_root: str, seed: int = 0, counts: dict | None = None) -> None:
    """Write ``data_root/synthetic/{images,masks}`` and ``prompts_root/synthetic/{split}.json``."""
    counts = counts or COUNTS
    img_dir = os.path.join(data_root, "synthetic", "images")
    mask_dir = os.path.join(data_root, "synthetic", "masks")
    man_dir = os.path.join(prompts_root, "synthetic")
    for d in (img_dir, mask_dir, man_dir):
        os.makedirs(d, exist_ok=True)
    for split_no, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, split_no])
        records = []
        for i in range(n):
            img, objs, masks = make_image(rng)
            stem = f"{split}_{i:04d}"
            img.save(os.path.join(img_dir, stem + ".png"))
            for k, (obj, mask) in enumerate(zip(objs, masks)):
                mask_name = f"{stem}_{k}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(mask_dir, mask_name))
                records.append({"img_name": stem + ".png", "mask_name": mask_name, "prompts": prompts_for(obj),
                                "bbox": obj["bbox"], "cat": 1, "segment_id": k, "sentences": [],
                                "class_name": obj["shape"], "attributes": obj})
        write_json_atomic(os.path.join(man_dir, f"{split}.json"), records)


def ensure_synthetic(data_root: str, prompts_root: str, seed: int = 0) -> None:
    """Generate the synthetic dataset unless its manifests exist and every image and mask they name is on disk
    under ``data_root`` (so deleting ``data/`` or pointing ``--data-root`` elsewhere regenerates it)."""
    man_dir = os.path.join(prompts_root, "synthetic")
    if _complete(data_root, man_dir):
        return
    print(f"generating the synthetic dataset into {os.path.join(data_root, 'synthetic')} (once) ...", flush=True)
    generate(data_root, prompts_root, seed)


def _complete(data_root: str, man_dir: str) -> bool:
    if not all(os.path.exists(os.path.join(man_dir, f"{s}.json")) for s in COUNTS):
        return False
    folders = {k: os.path.join(data_root, "synthetic", k) for k in ("images", "masks")}
    if not all(os.path.isdir(d) for d in folders.values()):
        return False
    on_disk = {k: set(os.listdir(d)) for k, d in folders.items()}
    for split in COUNTS:
        try:
            records = load_manifest(os.path.join(man_dir, f"{split}.json"))
        except ValueError:
            return False
        if any(r["img_name"] not in on_disk["images"] or r["mask_name"] not in on_disk["masks"] for r in records):
            return False
    return True
