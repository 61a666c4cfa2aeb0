"""Predict masks for your own images (a folder, files or a glob) with a trained model and a text prompt.

    python predict.py --checkpoint runs/kvasir/clipseg/p3/<stamp> --images my_scans/ --prompt "round pink polyp"
    python predict.py --checkpoint last --images a.png b.jpg --prompt "small red circle" --overlay

Masks are written at each image's original size as 0/255 PNG (and optional overlays) into --out
(default <run>/predict/<timestamp>/, never overwriting earlier predictions); probabilities above --threshold
(default: the run's) are foreground.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch
from PIL import Image

import engine
from datasets import BadSampleError, SegTransform, read_image
from evaluate import new_output_dir, resolve_checkpoint

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("predict.py", add_help=add_help, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder, .pth file, or 'last'")
    p.add_argument("--output-dir", default="runs", help="where train.py wrote last_run.txt (for --checkpoint last)")
    p.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    p.add_argument("--prompt", default="", help="the text prompt (ignored by text-free models)")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the run's)")
    p.add_argument("--out", default=None, help="output folder (must not exist); default <run>/predict/<timestamp>")
    p.add_argument("--overlay", action="store_true", help="also write image+mask overlays")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
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
        raise SystemExit(f"no images found in {specs} (extensions: {', '.join(IMAGE_EXTS)})")
    return files


@torch.no_grad()
def predict(model, files: list[str], prompt: str, threshold: float, device, batch_size: int = 8):
    """Yield (path, original RGB image, bool mask at original size) for each readable image."""
    model.eval()
    tf = SegTransform(model.input_size, model.image_mean, model.image_std)
    for i in range(0, len(files), batch_size):
        chunk, pils, xs = [], [], []
        for path in files[i:i + batch_size]:
            try:
                img, _ = read_image(path)
            except BadSampleError as e:
                print(f"skipped: {e}")
                continue
            chunk.append(path)
            pils.append(img)
            xs.append(tf(img, np.zeros((img.height, img.width), bool))[0])
        if not chunk:
            continue
        logits = engine.forward_batch(model, {"image": torch.stack(xs), "text": [prompt] * len(xs)}, device)
        for path, img, lg in zip(chunk, pils, logits):
            yield path, img, engine.mask_at_size(lg, (img.height, img.width), threshold).numpy()


def main(args) -> str:
    device = engine.pick_device(args.device)
    ckpt_path, run_dir = resolve_checkpoint(args.checkpoint, args.output_dir)
    model, ckpt = engine.model_from_checkpoint(ckpt_path, device)
    threshold = args.threshold if args.threshold is not None else ckpt.get("threshold", model.default_threshold)
    out = new_output_dir(args.out, os.path.join(run_dir, "predict", time.strftime("%Y%m%d-%H%M%S")), "predictions")
    files = list_images(args.images)
    n = 0
    for path, img, mask in predict(model, files, args.prompt, threshold, device, args.batch_size):
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(out, f"{stem}_mask.png"))
        if args.overlay:
            arr = np.asarray(img).astype(np.float32)
            arr[mask] = 0.5 * arr[mask] + 0.5 * np.array([255, 0, 0])
            Image.fromarray(arr.astype(np.uint8)).save(os.path.join(out, f"{stem}_overlay.png"))
        n += 1
    print(f"wrote {n} masks for prompt {args.prompt!r} to {out}")
    return out


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser())
