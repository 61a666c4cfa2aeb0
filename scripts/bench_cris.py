"""Benchmark CRIS: parameter count, golden max error, forward time.

Usage: python scripts/bench_cris.py [--size base] [--batch 2] [--repeats 3] [--threads N] [--device cpu]
Prints one line per measurement.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "..", "shared", "reference", "cris", "tiny_golden.pt")
sys.path.insert(0, ROOT)  # run as a script from anywhere; models is imported where it is used


def golden_error(path: str) -> float | None:
    from models.cris import build_cris, load_original_state_dict
    from vlsm.checkpoint import load_torch_file
    if not os.path.isfile(path):
        return None
    g = load_torch_file(path, "golden file")
    model = build_cris(config=g["config"]).eval()
    load_original_state_dict(model, g["state_dict"])
    with torch.no_grad():
        out = model(g["image"], g["text_ids"])
    return (out - g["output"]).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="base")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--golden", default=GOLDEN)
    args = ap.parse_args()
    from models.cris import build_cris
    if args.threads:
        torch.set_num_threads(args.threads)
    err = golden_error(args.golden)
    print(f"golden max abs error (float32): {err:.3e}" if err is not None else "golden file not found")
    model = build_cris(size=args.size).eval().to(args.device)
    counts = model.parameter_counts()
    print(f"parameters ({args.size}): {counts['total']:,}")
    s = model.input_size
    x = torch.randn(args.batch, 3, s, s, device=args.device)
    tok = model.tokenize(["one small pink round polyp located in center of the image"] * args.batch, args.device)
    with torch.no_grad():
        model(x, **tok)  # warm-up
        times = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(x, **tok)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    print(f"forward {args.size} {s}px batch {args.batch} on {args.device} ({torch.get_num_threads()} threads): "
          f"min {min(times):.3f} s, mean {sum(times) / len(times):.3f} s over {len(times)}; "
          f"output {tuple(out.shape)}, word_len {tok['input_ids'].shape[1]}")


if __name__ == "__main__":
    main()
