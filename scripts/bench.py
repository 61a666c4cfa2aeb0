"""Speed benchmark: data loading, training steps and evaluation, printed as numbers.

    python scripts/bench.py [--models clipseg,cris,unet] [--size tiny|base] [--batch 32] [--steps 10]

Measures (on this machine's CPU or CUDA):
- data: samples/s of the manifest loader on the synthetic set and, when ../shared/data exists, real Kvasir
  (JPEG decode + resize + normalise, one process);
- train: seconds per optimisation step (forward + loss + backward + AdamW) at the model's input size;
- infer: images/s of a forward pass without gradients.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from datasets import ManifestDataset, SegTransform, build_dataset  # noqa: E402
from models import create_model  # noqa: E402
from vlsm.losses import SegLoss  # noqa: E402
from vlsm.optim import build_optimizer  # noqa: E402
from vlsm.runtime import autocast, forward_batch, pick_device  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="clipseg,cris,biomedclipseg,unet", help="comma-separated model names")
    p.add_argument("--size", default="tiny", choices=["tiny", "base"], help="model size")
    p.add_argument("--batch", type=int, default=32, help="batch size for train/infer timings")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--data-root", default="data", help="where the synthetic set lives (made if missing)")
    p.add_argument("--prompts-root", default="prompts_json", help="manifest root")
    p.add_argument("--shared-data", default=os.path.join(ROOT, "..", "shared", "data"), help="real data folder")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    return p


def time_loader(ds, n: int = 200) -> float:
    n = min(n, len(ds))
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t)


def bench_data(args) -> dict:
    out = {}
    ds = build_dataset("synthetic", "train", prompt="p3", data_root=args.data_root, prompts_root=args.prompts_root,
                       input_size=96, mean=(0.5,) * 3, std=(0.25,) * 3)
    out["synthetic_96px_samples_per_s"] = time_loader(ds)
    kv = os.path.join(args.shared_data, "kvasir_seg")
    if os.path.isdir(kv):
        names = sorted(os.listdir(os.path.join(kv, "images")))[:100]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([{"img_name": n, "mask_name": n, "prompts": {"p1": "polyp"}} for n in names], f)
        for size in (352, 416):
            ds = ManifestDataset(f.name, os.path.join(kv, "images"), os.path.join(kv, "masks"), prompt="p1",
                                 transform=SegTransform(size, (0.5,) * 3, (0.25,) * 3))
            out[f"kvasir_{size}px_samples_per_s"] = time_loader(ds, 100)
        os.unlink(f.name)
    return out


def bench_model(name: str, args, device) -> dict:
    model = create_model(name, size=args.size).to(device)
    s, b = model.input_size, args.batch
    x = torch.randn(b, 3, s, s, device=device)
    y = (torch.rand(b, 1, s, s, device=device) > 0.5).float()
    texts = ["one small pink round polyp, located in the center of the image"] * b
    opt = build_optimizer(model, "adamw", 1e-4, 1e-3)
    loss_fn = SegLoss()
    amp = device.type == "cuda"
    batch = {"image": x, "text": texts}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for i in range(args.steps + 2):
        if i == 2:
            sync()
            t = time.perf_counter()
        with autocast(device, amp):
            logits = forward_batch(model, batch, device)
        loss = loss_fn(logits, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train_s = (time.perf_counter() - t) / args.steps
    model.eval()
    with torch.no_grad():
        for i in range(args.steps + 2):
            if i == 2:
                sync()
                t = time.perf_counter()
            with autocast(device, amp):
                forward_batch(model, batch, device)
    sync()
    infer = b * args.steps / (time.perf_counter() - t)
    return {"input": s, "params_M": round(model.parameter_counts()["total"] / 1e6, 2),
            "train_s_per_step": round(train_s, 3), "infer_images_per_s": round(infer, 1)}


def main(args) -> dict:
    device = pick_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, size {args.size}")
    results = {"data": bench_data(args)}
    for k, v in results["data"].items():
        print(f"data  {k:34s} {v:8.1f}")
    for name in [m for m in args.models.split(",") if m]:
        r = bench_model(name, args, device)
        results[name] = r
        print(f"model {name:16s} input {r['input']:4d}  params {r['params_M']:7.2f}M  "
              f"train {r['train_s_per_step']:.3f} s/step  infer {r['infer_images_per_s']:.1f} img/s")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
