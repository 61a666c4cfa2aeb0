"""Predict masks for your own images (a folder, files or a glob) with a trained or a pretrained model.

    python predict.py --checkpoint runs/kvasir/clipseg/p3/<stamp> --images my_scans/ --prompt "round pink polyp"
    python predict.py --checkpoint last --images a.png b.jpg --prompt "small red circle"
    python predict.py --model clipseg --weights /path/to/clipseg-rd64-refined --images scans/ --prompt "polyp"

For every image, at its original size: ``<stem>_mask.png`` (0/255), ``<stem>_overlay.png`` (the mask's outline
drawn on the image: a bright line on a dark halo, visible on red objects too; --no-overlay to skip) and a row
of ``predictions.csv``: mask area in pixels and as a fraction of the image, bounding box (inclusive x1 y1 x2 y2),
mean and max probability inside the mask.  Logits are upsampled bilinearly to the original size, then sigmoid
and threshold (default: the run's, else the model's).  Output goes to --out (must not exist), default
<run>/predict/<timestamp>/ or, with --weights, <output-dir>/predict/<model>/<timestamp>/; earlier predictions
are never overwritten.  Unreadable images are skipped and listed.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets import BadSampleError, SegTransform, read_image
from util.checkpoint import new_dir
from util.errors import run_cli
from util.io import write_csv_atomic
from util.metrics import upsample_logits
from util.runtime import forward_batch, pick_device
from vlsm import cli
from vlsm.figures import draw_outline
from vlsm.loading import load_for_eval

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CSV_COLUMNS = ("image", "mask", "overlay", "width", "height", "area_px", "area_fraction", "bbox_x1", "bbox_y1",
               "bbox_x2", "bbox_y2", "mean_prob_in_mask", "max_prob", "prompt", "threshold")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("predict.py", add_help=add_help, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.runtime_options(8), cli.model_options()])
    g = p.add_argument_group("input and output")
    g.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    g.add_argument("--prompt", default="", help="the text prompt (ignored by text-free models)")
    g.add_argument("--output-dir", default="runs", help="runs root (where train.py wrote last_run.txt)")
    g.add_argument("--out", default=None, help="output folder (must not exist); default <run>/predict/<timestamp>")
    g.add_argument("--no-overlay", action="store_true", help="do not write the outline overlays")
    return p


def list_images(specs: list[str]) -> list[str]:
    files = []
    for s in specs:
        if os.path.isdir(s):
            files += sorted(os.path.join(s, f) for f in os.listdir(s) if f.lower().endswith(IMAGE_EXTS))
        elif any(c in s for c in "*?["):
            files += sorted(glob.glob(s))
        else:
            files.append(s)
    if not files:
        raise FileNotFoundError(f"no images found in {specs} (extensions: {', '.join(IMAGE_EXTS)})")
    return files


class ImageFiles(Dataset):
    """Image files -> model input, the original RGB array, or the reason the file was skipped."""

    def __init__(self, files: list[str], transform: SegTransform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path = self.files[i]
        try:
            img, _ = read_image(path)
        except BadSampleError as e:
            return {"path": path, "error": str(e)}
        x = self.transform(img, np.zeros((img.height, img.width), bool))[0]
        return {"path": path, "image": x, "rgb": np.asarray(img)}


def _collate(items: list[dict]) -> dict:
    ok = [it for it in items if "error" not in it]
    batch = {"skipped": [it for it in items if "error" in it], "path": [it["path"] for it in ok],
             "rgb": [it["rgb"] for it in ok]}
    if ok:
        batch["image"] = torch.stack([it["image"] for it in ok])
    return batch


@torch.no_grad()
def predict(model, files: list[str], prompt: str, threshold: float, device, batch_size: int = 8,
            workers: int = 0, progress: bool = True):
    """Yield (path, RGB array, probabilities at original size, bool mask) per readable image; an unreadable
    one yields (path, None, None, error message)."""
    model.eval()
    ds = ImageFiles(files, SegTransform(model.input_size, model.image_mean, model.image_std))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    with tqdm(total=len(files), unit="img", desc="predict", disable=not progress) as bar:
        for batch in loader:
            for item in batch["skipped"]:
                yield item["path"], None, None, item["error"]
            if "image" in batch:
                logits = forward_batch(model, {"image": batch["image"], "text": [prompt] * len(batch["path"])},
                                       device)
                for path, rgb, lg in zip(batch["path"], batch["rgb"], logits):
                    prob = torch.sigmoid(upsample_logits(lg, rgb.shape[:2])[0]).cpu().numpy()
                    yield path, rgb, prob, prob > threshold
            bar.update(len(batch["path"]) + len(batch["skipped"]))


def mask_stats(prob: np.ndarray, mask: np.ndarray) -> dict:
    """Area (pixels, fraction), inclusive bounding box, mean/max probability inside the mask."""
    area = int(mask.sum())
    out = {"area_px": area, "area_fraction": round(area / mask.size, 6), "bbox_x1": "", "bbox_y1": "",
           "bbox_x2": "", "bbox_y2": "", "mean_prob_in_mask": "", "max_prob": round(float(prob.max()), 6)}
    if area:
        ys, xs = np.nonzero(mask)
        out.update(bbox_x1=int(xs.min()), bbox_y1=int(ys.min()), bbox_x2=int(xs.max()), bbox_y2=int(ys.max()),
                   mean_prob_in_mask=round(float(prob[mask].mean()), 6))
    return out


def main(args) -> str:
    device = pick_device(args.device)
    cli.fixed_threshold(args.threshold, "predict.py")
    loaded = load_for_eval(args, device)
    model, threshold, run_dir = loaded.model, loaded.threshold, loaded.run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    default = (os.path.join(run_dir, "predict", stamp) if run_dir
               else os.path.join(args.output_dir, "predict", args.model, stamp))
    files = list_images(args.images)
    out = new_dir(args.out, default, "predictions")
    rows, skipped, stems = [], [], set()
    for path, rgb, prob, mask in predict(model, files, args.prompt, threshold, device, args.batch_size,
                                         args.workers):
        if rgb is None:
            skipped.append(f"{path}: {mask}")
            continue
        stem, k = os.path.splitext(os.path.basename(path))[0], 1
        base = stem
        while stem in stems:  # a.png and a.jpg, or the same name in two folders
            stem, k = f"{base}-{k}", k + 1
        stems.add(stem)
        mask_file = f"{stem}_mask.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(out, mask_file))
        overlay_file = ""
        if not args.no_overlay:
            overlay_file = f"{stem}_overlay.png"
            Image.fromarray(draw_outline(rgb, mask)).save(os.path.join(out, overlay_file))
        rows.append({"image": path, "mask": mask_file, "overlay": overlay_file, "width": rgb.shape[1],
                     "height": rgb.shape[0], **mask_stats(prob, mask), "prompt": args.prompt, "threshold": threshold})
    write_csv_atomic(os.path.join(out, "predictions.csv"), rows, CSV_COLUMNS)
    for s in skipped:
        print(f"skipped: {s}")
    print(f"wrote {len(rows)} masks{'' if args.no_overlay else ' and overlays'} for prompt {args.prompt!r} "
          f"(threshold {threshold}) and predictions.csv to {out}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return out


if __name__ == "__main__":
    run_cli(main, get_args_parser())
