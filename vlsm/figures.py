"""Pictures of predictions: mask outlines drawn on images, and the showcase figure.

- :func:`draw_outline`: the mask's outline on the image, a bright line on a dark halo, so it stays visible on red,
  dark and bright objects alike (a red tint vanishes on a red polyp);
- :func:`showcase`: a few test images side by side: image, ground truth, the prediction with the right prompt,
  the prediction with another object's prompt (another target of the same image where there is one, else the
  prompt of another image).

    python -m vlsm.figures --checkpoint last            # writes <run>/showcase.png and prints its path
    python -m vlsm.figures --checkpoint RUN --data kvasir --n 6 --out showcase.png
"""
from __future__ import annotations

import argparse
import os
import textwrap

import numpy as np
import torch
from scipy import ndimage

from util.errors import run_cli
from util.metrics import dice_iou, mask_at_size
from util.runtime import forward_batch, pick_device

from . import cli

OUTLINE = (0, 255, 0)
HALO = (0, 0, 0)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (bool, same shape)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def line_width(shape) -> int:
    return max(1, round(min(shape[:2]) / 150))


def draw_outline(image, mask, colour=OUTLINE, width: int | None = None, halo=HALO) -> np.ndarray:
    """RGB uint8 copy of ``image`` with the outline of ``mask`` drawn in ``colour`` over a ``halo`` line."""
    arr = np.array(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8, copy=True)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    mask = np.asarray(mask, bool)
    if mask.shape != arr.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {arr.shape[:2]} differ in size")
    w = width or line_width(arr.shape)
    edge = outline(mask, w)
    if halo is not None:
        ring = ndimage.binary_dilation(edge, iterations=max(1, w // 2 + 1)) & ~edge
        arr[ring] = halo
    arr[edge] = colour
    return arr


# ----------------------------------------------------------------------------- showcase


def pick_records(records: list[dict], key: str, n: int) -> list[tuple[dict, str, str]]:
    """Up to ``n`` (record, right text, other object's text), one per image: images with another target first
    (its prompt), then others (the next image's prompt)."""
    from .text_report import evaluated_text
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["img_name"], []).append(r)
    images = list(by_image)
    chosen, used = [], set()
    for img in images:  # another target of the same image
        recs = by_image[img]
        others = [o for o in recs[1:] if o["mask_name"] != recs[0]["mask_name"]]
        if others and len(chosen) < n:
            chosen.append((recs[0], evaluated_text(recs[0], key), evaluated_text(others[0], key)))
            used.add(img)
    for i, img in enumerate(images):  # else the prompt of the next image
        if len(chosen) >= n:
            break
        if img not in used and len(images) > 1:
            nxt = by_image[images[(i + 1) % len(images)]][0]
            chosen.append((by_image[img][0], evaluated_text(by_image[img][0], key), evaluated_text(nxt, key)))
    return chosen


@torch.no_grad()
def _predict(model, pil, texts: list[str], device, threshold: float) -> list[np.ndarray]:
    from datasets import SegTransform
    tf = SegTransform(model.input_size, model.image_mean, model.image_std)
    x = tf(pil, np.zeros((pil.height, pil.width), bool))[0]
    logits = forward_batch(model, {"image": x[None].repeat(len(texts), 1, 1, 1), "text": texts}, device)
    return [mask_at_size(lg, (pil.height, pil.width), threshold).numpy() for lg in logits]


def showcase(model, data: str, prompt: str, threshold: float, device, out_png: str, *, split: str = "test",
             data_root: str = "data", prompts_root: str = "prompts_json", n: int = 4, title: str = "") -> str:
    """Write the side-by-side PNG (rows: images; columns: image, ground truth, right prompt, other object's
    prompt; Dice in the titles) and return its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datasets import load_manifest, parse_names, read_image, read_mask
    name = parse_names(data)[0]
    if prompt == "random":
        prompt = "p1"
    records = load_manifest(os.path.join(prompts_root, name, f"{split}.json"))
    picks = pick_records(records, prompt, n)
    if not picks:
        raise ValueError(f"{name} {split}: no records to show")
    model.eval()
    fig, axes = plt.subplots(len(picks), 4, figsize=(12, 3.2 * len(picks)), squeeze=False)
    for row, (rec, right, other) in zip(axes, picks):
        pil, _ = read_image(os.path.join(data_root, name, "images", rec["img_name"]))
        gt = read_mask(os.path.join(data_root, name, "masks", rec["mask_name"])).astype(bool)
        pred_right, pred_other = _predict(model, pil, [right, other], device, threshold)
        d_right, d_other = (dice_iou(torch.from_numpy(p), torch.from_numpy(gt))[0] for p in (pred_right, pred_other))
        panels = [(np.asarray(pil), rec["img_name"]),
                  (draw_outline(pil, gt, colour=(255, 255, 0)), "ground truth"),
                  (draw_outline(pil, pred_right), f"right prompt: \"{right}\"\nDice {d_right:.2f}"),
                  (draw_outline(pil, pred_other, colour=(255, 0, 255)),
                   f"other object's prompt: \"{other}\"\nDice vs this target {d_other:.2f}")]
        for ax, (img, text) in zip(row, panels):
            ax.imshow(img)
            ax.set_title("\n".join(textwrap.fill(t, 40) for t in text.split("\n")), fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------- command line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m vlsm.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.trained_run_options(auto_threshold=False)])
    p.add_argument("--data", default=None, help="dataset (default: the run's training data; pooled: the first)")
    p.add_argument("--split", default="test", help="split to show (default test)")
    p.add_argument("--prompt", default=None, help="prompt key (default: the training prompt)")
    p.add_argument("--data-root", default=None, help="default: the run's")
    p.add_argument("--prompts-root", default=None, help="default: the run's")
    p.add_argument("--n", type=int, default=4, help="number of images (rows)")
    p.add_argument("--out", default=None, help="PNG path (default <run>/showcase.png)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    return p


def main(args) -> str:
    from .loading import load_trained
    device = pick_device(args.device)
    run = load_trained(args.checkpoint, args.output_dir, device, cli.fixed_threshold(args.threshold, "vlsm.figures"))
    model, run_dir, targs, threshold = run.model, run.run_dir, run.args, run.threshold
    out = showcase(model, args.data or targs.get("data", "synthetic"), args.prompt or targs.get("prompt", "p1"),
                   threshold, device, args.out or os.path.join(run_dir, "showcase.png"), split=args.split,
                   data_root=args.data_root or targs.get("data_root", "data"),
                   prompts_root=args.prompts_root or targs.get("prompts_root", "prompts_json"), n=args.n,
                   title=f"{targs.get('model', '')} trained on {targs.get('data', '')} with {targs.get('prompt', '')}")
    print(out)
    return out


if __name__ == "__main__":
    run_cli(main, get_args_parser())
