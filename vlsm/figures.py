"""Pictures of predictions: mask outlines drawn on images, and the showcase figure.

- :func:`draw_outline`: the mask's outline on the image, a bright line on a dark halo, so it stays visible on red,
  dark and bright objects alike (a red tint vanishes on a red polyp);
- :func:`showcase`: a few test images side by side: image, ground truth, the prediction with the right prompt,
  the prediction with another object's prompt (another target of the same image where there is one, else the
  prompt of another image);
- :func:`largest_drops`: the paper's Figure 4: the test images whose Dice drops most when one attribute of the
  prompt takes another value of the dataset's value set (``datasets.perturb``, kind ``same_set``): image, ground
  truth, prediction before and after, with both prompts and Dice; every candidate's Dice in a CSV beside it.

    python -m vlsm.figures --checkpoint last            # writes <run>/showcase.png and prints its path
    python -m vlsm.figures --checkpoint RUN --data kvasir --n 6 --out showcase.png
    python -m vlsm.figures --checkpoint RUN --drops size,location       # <run>/largest_drops_<data>.png (Figure 4)
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


def _panel_row(axes, pil, name: str, gt, first, first_title: str, second, second_title: str) -> None:
    """One figure row: the image, its ground truth (yellow), and two predictions as outlines (green, magenta)."""
    panels = [(np.asarray(pil), name), (draw_outline(pil, gt, colour=(255, 255, 0)), "ground truth"),
              (draw_outline(pil, first), first_title), (draw_outline(pil, second, colour=(255, 0, 255)), second_title)]
    for ax, (img, text) in zip(axes, panels):
        ax.imshow(img)
        ax.set_title("\n".join(textwrap.fill(t, 40) for t in text.split("\n")), fontsize=8)
        ax.axis("off")


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
        _panel_row(row, pil, rec["img_name"], gt, pred_right, f"right prompt: \"{right}\"\nDice {d_right:.2f}",
                   pred_other, f"other object's prompt: \"{other}\"\nDice vs this target {d_other:.2f}")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------- Figure 4: the largest drops


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(dice_iou(torch.from_numpy(pred), torch.from_numpy(gt))[0])


def drop_candidates(model, name: str, records: list[dict], prompt: str, threshold: float, device, *,
                    attributes=("size", "location"), kind: str = "same_set", seed: int = 0,
                    data_root: str = "data") -> list[dict]:
    """For each record and attribute whose perturbed prompt differs: Dice with the right prompt and with the
    perturbed one (``datasets.perturb.perturb_records``: attributes or the released prompts), without keeping the
    masks.  Rows: index, img_name, attribute, from, to, before/after texts and Dice, drop."""
    from datasets import read_image, read_mask
    from datasets.perturb import perturb_records

    from .text_report import evaluated_text
    perturbed = {a: perturb_records(records, name, a, kind, seed) for a in attributes}
    rows = []
    model.eval()
    for i, rec in enumerate(records):
        before = evaluated_text(rec, prompt)
        alts = []
        for a in attributes:
            new = perturbed[a][i]
            after = evaluated_text(new, prompt)
            if new["perturbation"]["changed"] and after != before:
                alts.append((a, new["perturbation"], after))
        if not alts:
            continue
        pil, _ = read_image(os.path.join(data_root, name, "images", rec["img_name"]))
        gt = read_mask(os.path.join(data_root, name, "masks", rec["mask_name"])).astype(bool)
        preds = _predict(model, pil, [before] + [t for _, _, t in alts], device, threshold)
        d0 = _dice(preds[0], gt)
        for (a, pert, after), pred in zip(alts, preds[1:]):
            d1 = _dice(pred, gt)
            rows.append({"index": i, "img_name": rec["img_name"], "attribute": a, "from": str(pert["from"]),
                         "to": str(pert["to"]), "prompt_before": before, "prompt_after": after,
                         "dice_before": d0, "dice_after": d1, "drop": d0 - d1})
    return rows


def largest_drops(model, data: str, prompt: str, threshold: float, device, out_png: str, *, split: str = "test",
                  data_root: str = "data", prompts_root: str = "prompts_json", attributes=("size", "location"),
                  kind: str = "same_set", n: int = 4, seed: int = 0, title: str = "") -> tuple[str, list[dict]]:
    """The paper's Figure 4 for one dataset: the ``n`` images (one row each, the attribute with its largest drop)
    whose Dice falls most when an attribute of the prompt takes another value (``kind``; default ``same_set``,
    another value of the dataset's own value set).  Columns: image, ground truth, prediction with the right prompt,
    prediction with the perturbed prompt.  Writes ``out_png`` and every candidate's Dice to the CSV beside it;
    returns (png path, the rows shown)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datasets import load_manifest, parse_names, read_image, read_mask
    from util.io import write_csv_atomic
    name = parse_names(data, data_root)[0]
    prompt = "p1" if prompt == "random" else prompt
    records = load_manifest(os.path.join(prompts_root, name, f"{split}.json"))
    rows = drop_candidates(model, name, records, prompt, threshold, device, attributes=attributes, kind=kind,
                           seed=seed, data_root=data_root)
    if not rows:
        raise ValueError(f"{name} {split}: no prompt changes when {', '.join(attributes)} take another value "
                         f"({kind}); nothing to show")
    csv_path = os.path.splitext(out_png)[0] + ".csv"
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    write_csv_atomic(csv_path, sorted(rows, key=lambda r: -r["drop"]), list(rows[0]))
    shown, seen = [], set()
    for r in sorted(rows, key=lambda r: -r["drop"]):
        if r["img_name"] not in seen and len(shown) < n:
            shown.append(r)
            seen.add(r["img_name"])
    fig, axes = plt.subplots(len(shown), 4, figsize=(12, 3.3 * len(shown)), squeeze=False)
    for row, r in zip(axes, shown):
        rec = records[r["index"]]
        pil, _ = read_image(os.path.join(data_root, name, "images", rec["img_name"]))
        gt = read_mask(os.path.join(data_root, name, "masks", rec["mask_name"])).astype(bool)
        before, after = _predict(model, pil, [r["prompt_before"], r["prompt_after"]], device, threshold)
        _panel_row(row, pil, rec["img_name"], gt, before,
                   f"before: \"{r['prompt_before']}\"\nDice {r['dice_before']:.2f}", after,
                   f"{r['attribute']}: {r['from']} -> {r['to']}\n\"{r['prompt_after']}\"\nDice {r['dice_after']:.2f}")
    fig.suptitle(title or f"{name}: largest Dice drops when {', '.join(attributes)} take another value ({kind})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png, shown


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
    p.add_argument("--out", default=None, help="PNG path (default <run>/showcase.png, or "
                   "<run>/largest_drops_<data>.png with --drops)")
    p.add_argument("--drops", default=None, metavar="ATTRIBUTES",
                   help="the paper's Figure 4 instead of the showcase: the images whose Dice drops most when one of "
                        "these attributes (comma-separated, e.g. size,location) takes another value; one figure per "
                        "dataset of --data")
    p.add_argument("--kind", default="same_set", help="with --drops: how the value changes (datasets.perturb.KINDS; "
                   "default same_set: another value of the dataset's value set, as Figure 4)")
    p.add_argument("--seed", type=int, default=0, help="with --drops: seed of the value choices")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    return p


def main(args) -> str:
    from .loading import load_trained
    device = pick_device(args.device)
    run = load_trained(args.checkpoint, args.output_dir, device, cli.fixed_threshold(args.threshold, "vlsm.figures"))
    model, run_dir, targs, threshold = run.model, run.run_dir, run.args, run.threshold
    if args.drops:
        return _drops_main(args, model, run_dir, targs, threshold, device)
    out = showcase(model, args.data or targs.get("data", "synthetic"), args.prompt or targs.get("prompt", "p1"),
                   threshold, device, args.out or os.path.join(run_dir, "showcase.png"), split=args.split,
                   data_root=args.data_root or targs.get("data_root", "data"),
                   prompts_root=args.prompts_root or targs.get("prompts_root", "prompts_json"), n=args.n,
                   title=f"{targs.get('model', '')} trained on {targs.get('data', '')} with {targs.get('prompt', '')}")
    print(out)
    return out


def _drops_main(args, model, run_dir: str, targs: dict, threshold: float, device) -> list[str]:
    from datasets.perturb import ALIASES, KINDS, PERTURBABLE, parse_list
    from datasets.registry import parse_names
    attributes = parse_list(args.drops, PERTURBABLE, ALIASES, "attribute")
    kind = parse_list(args.kind, KINDS, what="kind")[0]
    data_root = args.data_root or targs.get("data_root", "data")
    outs = []
    for name in parse_names(args.data or targs.get("data", "synthetic"), data_root):
        out = args.out if args.out and len(outs) == 0 else os.path.join(run_dir, f"largest_drops_{name}.png")
        path, shown = largest_drops(model, name, args.prompt or targs.get("prompt", "p1"), threshold, device, out,
                                    split=args.split, data_root=data_root,
                                    prompts_root=args.prompts_root or targs.get("prompts_root", "prompts_json"),
                                    attributes=attributes, kind=kind, n=args.n, seed=args.seed)
        for r in shown:
            print(f"{name} {r['img_name']}: {r['attribute']} {r['from']} -> {r['to']}: Dice {r['dice_before']:.3f} "
                  f"-> {r['dice_after']:.3f}")
        print(path)
        outs.append(path)
    return outs


if __name__ == "__main__":
    run_cli(main, get_args_parser())
