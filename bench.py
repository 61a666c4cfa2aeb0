"""Speed benchmark: ratios that hold on any machine, measured side by side in one run (docs/performance.md).

    python bench.py                          # CPU or CUDA, whichever is there
    python bench.py --device cpu --shared-data ../shared/data

1. data: the paper-style per-sample path (decode the full-size JPEG image and mask, resize, normalise and
   tokenize on every step) against the cached path (datasets/cache.py: uint8 at the input size, memory-mapped,
   normalised on the device, each prompt tokenized once); real Kvasir-SEG at 352 px, the same images, batch 16,
   0 and 2 workers (persistent, one warm-up epoch).  Skipped with a message when Kvasir is absent.
2. frozen encoders: one training epoch of a full-size CLIPSeg (random weights) with both encoders frozen,
   recomputing the encoders every step against training the decoder from the feature cache
   (vlsm/feature_cache.py; its one-time build is reported apart).
3. evaluation at each image's original size (batched upsampling and counting on the device) against
   evaluation at the model's size, same images, same forward pass: the decoder from the feature cache, the
   cheapest forward there is, so that the metric's share of the cost is the largest.
4. one training step and one evaluation step of every full-size model at its input size (random weights);
   on CUDA with AMP (bf16 where supported), channels_last for the CNNs, images/s and peak memory.
5. ways to train CLIPSeg base: full fine-tuning, decoder only, VLSM-Adapter shallow/dense, LoRA, CoOp, VPT
   (models/peft): trainable parameters, training step time and (CUDA) peak memory, each against full fine-tuning.
6. the app (vlsm/app): 5 prompts against 1 on one image, with the image encoded once.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import engine
from datasets import ManifestDataset, SegTransform, collate
from datasets.cache import loader_workers
from datasets.synthetic import generate
from models import create_model
from util.errors import run_cli
from util.runtime import amp_dtype, pick_device, prepare_images, tokenize_cached
from vlsm.feature_cache import FeatureCache
from vlsm.losses import SegLoss
from vlsm.optim import build_optimizer

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS = ("clipseg", "cris", "biomedclipseg", "unet", "unetplusplus", "deeplabv3plus")
TARGETS = {"data": 10.0, "features": 5.0, "eval": 1.2}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared-data", default=os.path.join(ROOT, "..", "shared", "data"),
                   help="folder holding kvasir_seg/{images,masks} (default ../shared/data)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--images", type=int, default=300, help="Kvasir images for the data comparison")
    p.add_argument("--size", type=int, default=352, help="input size of the data comparison")
    p.add_argument("--batch", type=int, default=16, help="batch size of the data comparison")
    p.add_argument("--feature-images", type=int, default=None,
                   help="images of the frozen-encoder epoch and of each evaluation (default 16 on CPU, 256 on CUDA)")
    p.add_argument("--model-batch", type=int, default=None,
                   help="batch of the per-model steps (default 2 on CPU, 16 on CUDA)")
    p.add_argument("--models", default=",".join(MODELS), help="models of the per-model steps (comma-separated; "
                   "biomedclipseg_d is biomedclipseg with another decoder initialisation: the same at random init)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 1 CPU, 10 CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models of the per-model steps (CUDA)")
    p.add_argument("--skip", default="", help="sections to skip: data,features,eval,models,peft,prompts")
    return p


# ----------------------------------------------------------------------------------------------------- helpers

def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = (f"{cpu}; {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"Python {platform.python_version()}")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        text += f"; GPU {p.name} ({p.total_memory / 2**30:.0f} GiB), AMP {str(amp_dtype(device)).replace('torch.', '')}"
    try:
        text += f"; load average {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return text


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PaperStyleDataset(Dataset):
    """What the paper code's dataset does on every step, written minimally here: open the full-size image and
    mask, decode them, resize to the input size (bilinear / nearest), scale and normalise the image, threshold
    the mask, and tokenize the prompt of this sample."""

    def __init__(self, records, image_dir, mask_dir, size, mean, std, tokenizer):
        self.records, self.image_dir, self.mask_dir = records, image_dir, mask_dir
        self.size, self.tokenizer = size, tokenizer
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        img = Image.open(os.path.join(self.image_dir, r["img_name"])).convert("RGB")
        mask = Image.open(os.path.join(self.mask_dir, r["mask_name"])).convert("L")
        img = img.resize((self.size, self.size), Image.BILINEAR)
        mask = mask.resize((self.size, self.size), Image.NEAREST)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        y = torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32))[None]
        tok = self.tokenizer([r["prompts"]["p1"]])
        return {"image": (x - self.mean) / self.std, "mask": y, "input_ids": tok["input_ids"][0],
                "attention_mask": tok["attention_mask"][0]}


def _images_per_s(loader, consume, min_seconds: float, warm: int = 2, max_epochs: int = 50) -> float:
    """Images per second after the first ``warm`` batches (workers started), over at least one epoch and at least
    ``min_seconds``; persistent workers carry over from epoch to epoch."""
    n, t0, seen = 0, None, 0
    for _ in range(max_epochs):
        for batch in loader:
            consume(batch)
            seen += 1
            if seen == warm:
                t0 = time.perf_counter()
            elif t0 is not None:
                n += batch["image"].shape[0]
        if t0 is not None and time.perf_counter() - t0 >= min_seconds:
            break
    return n / (time.perf_counter() - t0)


def kvasir(args):
    folder = os.path.join(args.shared_data, "kvasir_seg")
    if not os.path.isdir(os.path.join(folder, "images")):
        return None
    names = sorted(os.listdir(os.path.join(folder, "images")))
    return folder, [{"img_name": n, "mask_name": n, "prompts": {"p1": "polyp"}} for n in names]


def _frozen_set(args, work):
    """(image dir, mask dir, records, what): Kvasir when present, else a small synthetic set."""
    kv = kvasir(args)
    if kv:
        return os.path.join(kv[0], "images"), os.path.join(kv[0], "masks"), kv[1], "Kvasir-SEG"
    generate(os.path.join(work, "syn"), os.path.join(work, "syn_pj"), seed=0,
             counts={"train": 2 * args.feature_images, "val": 2, "test": 2})
    recs = json.load(open(os.path.join(work, "syn_pj", "synthetic", "train.json")))
    recs = [dict(r, prompts={"p1": r["prompts"]["p3"]}) for r in recs]
    return (os.path.join(work, "syn", "synthetic", "images"), os.path.join(work, "syn", "synthetic", "masks"), recs,
            "synthetic (Kvasir-SEG absent)")


# ----------------------------------------------------------------------------------------------------- sections

def bench_data(args, device, work) -> dict | None:
    kv = kvasir(args)
    if kv is None:
        print(f"data: skipped, Kvasir-SEG not found under {args.shared_data}/kvasir_seg (see --shared-data)")
        return None
    folder, records = kv
    records = records[:args.images]
    from models.base import IMAGENET_MEAN, IMAGENET_STD
    from models.text import ClipTokenizer

    class Stats:  # what prepare_images and tokenize_cached read from a model
        image_mean, image_std, tokenizer = IMAGENET_MEAN, IMAGENET_STD, ClipTokenizer()
        uses_text = True

        def tokenize(self, texts, device=None):
            out = self.tokenizer(list(texts))
            return {k: v.to(device) for k, v in out.items()} if device is not None else out

    stats = Stats()
    t0 = time.perf_counter()
    cached = ManifestDataset(records, os.path.join(folder, "images"), os.path.join(folder, "masks"), prompt="p1",
                             transform=SegTransform(args.size, IMAGENET_MEAN, IMAGENET_STD), train=True, name="kvasir",
                             cache_dir=os.path.join(work, "cache"))
    build_s = time.perf_counter() - t0
    paper = PaperStyleDataset(records, os.path.join(folder, "images"), os.path.join(folder, "masks"), args.size,
                              IMAGENET_MEAN, IMAGENET_STD, stats.tokenizer)
    pin = device.type == "cuda"

    def use_paper(b):
        b["image"].to(device, non_blocking=True), b["input_ids"].to(device, non_blocking=True)
        sync(device)

    def use_cached(b):
        prepare_images(b["image"], stats, device), tokenize_cached(stats, b["text"], device)
        sync(device)

    out = {"images": len(records), "size": args.size, "cache_build_s": build_s}

    def loader(ds, w, **extra):
        return DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=w, pin_memory=pin,
                          persistent_workers=w > 0, generator=torch.Generator().manual_seed(0), **extra)

    for w in (0, 2):
        p = _images_per_s(loader(paper, w), use_paper, 0.0)
        # as training runs it: datasets.cache.loader_workers reads cached, un-augmented batches in this process
        c = _images_per_s(loader(cached, loader_workers(cached, w), collate_fn=collate), use_cached, 2.0)
        row = {"paper_img_s": p, "cached_img_s": c, "ratio": c / p}
        if w:  # and forced through the worker processes' queues, for comparison
            row["cached_via_workers_img_s"] = _images_per_s(loader(cached, w, collate_fn=collate), use_cached, 2.0)
        out[f"workers{w}"] = row
    return out


def _frozen_dataset(args, work, model, data, original: bool = False):
    img_dir, mask_dir, records, _ = data
    return ManifestDataset(records[:args.feature_images], img_dir, mask_dir, prompt="p1", train=not original,
                           return_original=original, name="frozen",
                           transform=SegTransform(model.input_size, model.image_mean, model.image_std),
                           cache_dir=os.path.join(work, "cache"))


def bench_features(args, device, work, model, data) -> tuple[dict, FeatureCache]:
    amp = device.type == "cuda"
    ds = _frozen_dataset(args, work, model, data)
    bs = 8 if device.type == "cpu" else 32
    loader = DataLoader(ds, batch_size=bs, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    opt = build_optimizer(model, "adamw", 1e-4, 1e-3)
    loss_fn = SegLoss()
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None

    def epoch(net, ld, steps=None):
        sync(device)
        t = time.perf_counter()
        engine.train_one_epoch(net, ld, opt, loss_fn, device, 0, scaler, amp, max_steps=steps)
        sync(device)
        return time.perf_counter() - t

    epoch(model, loader, 1)  # warm-up
    recompute = epoch(model, loader)
    t = time.perf_counter()
    fc = FeatureCache(model, device, amp, batch_size=bs)
    fc.add_dataset(ds)
    sync(device)
    build = time.perf_counter() - t
    epoch(fc.decoder, fc.wrap(loader), 1)  # warm-up
    cached = epoch(fc.decoder, fc.wrap(loader))
    return ({"data": data[3], "images": len(ds), "input": model.input_size, "recompute_epoch_s": recompute,
             "cached_epoch_s": cached, "build_s": build, "ratio": recompute / cached,
             "feature_MB": fc.nbytes() / 2**20}, fc)


def bench_eval(args, device, work, model, data, fc: FeatureCache | None) -> dict:
    """Scoring the same images against their masks at the original size and at the model's size.  The forward
    pass is the decoder from the feature cache, the cheapest there is, so the metric's share is the largest."""
    amp = device.type == "cuda"
    bs = 8 if device.type == "cpu" else 32
    if fc is None:
        fc = FeatureCache(model, device, amp, batch_size=bs)
        fc.add_dataset(_frozen_dataset(args, work, model, data))
    loaders = {name: fc.wrap(DataLoader(_frozen_dataset(args, work, model, data, original), batch_size=bs,
                                        shuffle=False, collate_fn=collate))
               for name, original in (("model_size", False), ("original_size", True))}
    out = {"data": data[3], "images": args.feature_images}
    for name, loader in loaders.items():  # warm-up
        engine.evaluate(fc.decoder, loader, device, amp=amp)
    for rep in range(3):  # alternating, best of three: the comparison does not depend on the order
        for name, loader in loaders.items():
            sync(device)
            t = time.perf_counter()
            res = engine.evaluate(fc.decoder, loader, device, amp=amp, per_image=True)
            sync(device)
            out[f"{name}_s"] = min(out.get(f"{name}_s", float("inf")), time.perf_counter() - t)
            out[f"{name}_dice"] = res["dice"]
    out["ratio"] = out["original_size_s"] / out["model_size_s"]
    return out


def _time_steps(model, args, device) -> dict:
    """One training step and one evaluation step of ``model`` at its input size, batch ``args.model_batch``
    (random inputs), after a warm-up: seconds, images/s and, on CUDA, peak memory."""
    if device.type == "cuda" and not model.uses_text:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    net = torch.compile(model) if args.compile and device.type == "cuda" else model
    s, b = model.input_size, args.model_batch
    g = torch.Generator().manual_seed(0)
    texts = ["one small pink round polyp, located in the center of the image"] * b
    batch = {"image": torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g),
             "mask": (torch.rand(b, 1, s, s, generator=g) > 0.5).float(), "text": texts,
             "dataset": ["bench"] * b, "name": [f"{i}.png" for i in range(b)],
             "mask_name": [f"{i}.png" for i in range(b)], "skipped": []}
    opt = build_optimizer(model, "adamw", 1e-4, 1e-3)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None
    loss_fn = SegLoss()
    steps = args.steps
    engine.evaluate(net, [batch], device, amp=amp)  # warm-up: kernels chosen, (compiled)
    if device.type == "cuda":  # on the CPU the first training step is timed: a warm-up would double the cost
        engine.train_one_epoch(net, [batch], opt, loss_fn, device, 0, scaler, amp)
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    engine.train_one_epoch(net, [batch] * steps, opt, loss_fn, device, 0, scaler, amp)
    sync(device)
    train_s = (time.perf_counter() - t) / steps
    peak_train = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    t = time.perf_counter()
    engine.evaluate(net, [batch] * steps, device, amp=amp)
    sync(device)
    eval_s = (time.perf_counter() - t) / steps
    counts = model.parameter_counts()
    out = {"input": s, "batch": b, "params_M": counts["total"] / 1e6, "trainable": counts["trainable"],
           "train_s_per_step": train_s, "eval_s_per_step": eval_s, "train_img_s": b / train_s,
           "eval_img_s": b / eval_s}
    if peak_train is not None:
        out["peak_train_GiB"] = peak_train
        out["peak_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    del net, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_model(name, args, device) -> dict:
    cfg = {}
    if name.startswith("biomedclipseg"):  # random weights have no PubMedBERT vocabulary: a tiny one tokenizes
        from models.biomedclipseg import default_tiny_vocab
        cfg["tokenizer_path"] = default_tiny_vocab()
    return _time_steps(create_model(name, weights=None, size="base", **cfg).to(device), args, device)


#: section 5: how CLIPSeg base is trained -> (freeze both encoders, --peft method, its options)
PEFT_SETTINGS = {"full fine-tuning": (False, None, {}), "decoder only": (True, None, {}),
                 "adapter-shallow": (False, "adapter-shallow", {}), "adapter-dense": (False, "adapter-dense", {}),
                 "lora r8": (False, "lora", {}), "coop": (False, "coop", {}), "vpt deep": (False, "vpt",
                                                                                          {"vpt_deep": True})}


def bench_peft(args, device) -> dict:
    """Trainable parameters, training step time and peak memory of each way to train CLIPSeg base
    (random weights), against full fine-tuning."""
    from models.peft import apply_peft
    out = {}
    for label, (frozen, method, opts) in PEFT_SETTINGS.items():
        torch.manual_seed(0)
        model = create_model("clipseg", weights=None, size="base", freeze_image_encoder=frozen,
                             freeze_text_encoder=frozen)
        if method:
            apply_peft(model, method, **opts)
        out[label] = _time_steps(model.to(device), args, device)
        del model
    return out


def bench_prompts(args, device) -> dict | None:
    """The app's cost of 5 prompts against 1 on one image (one image encoding + N text encodings and decodes)."""
    try:
        from vlsm.app import bench_app
    except ImportError:
        return None
    return bench_app(device=device)


# ----------------------------------------------------------------------------------------------------- main

def main(args) -> dict:
    device = pick_device(args.device)
    cpu = device.type == "cpu"
    args.feature_images = args.feature_images or (16 if cpu else 256)
    args.model_batch = args.model_batch or (2 if cpu else 16)
    args.steps = args.steps or (1 if cpu else 10)
    skip = set(filter(None, args.skip.split(",")))
    random.seed(0)
    torch.manual_seed(0)
    print(f"machine: {machine(device)}")
    print(f"command: python bench.py {' '.join(sys.argv[1:])}".rstrip())
    t_all = time.perf_counter()
    work = tempfile.mkdtemp(prefix="vlsm_bench_")
    results: dict = {}
    try:
        if "data" not in skip:
            r = results["data"] = bench_data(args, device, work)
            if r:
                print(f"\n1. data path, Kvasir-SEG {r['images']} images at {r['size']} px, batch {args.batch} "
                      f"(cache built once in {r['cache_build_s']:.1f} s)")
                print(f"   {'workers':>7}  {'paper-style img/s':>17}  {'cached img/s':>12}  {'ratio':>6}   "
                      f"cached through the 2 worker processes' queues")
                for w in (0, 2):
                    x = r[f"workers{w}"]
                    v = x.get("cached_via_workers_img_s")
                    via = f"   {v:.1f} img/s ({v / x['paper_img_s']:.1f}x)" if v else ""
                    print(f"   {w:>7}  {x['paper_img_s']:>17.1f}  {x['cached_img_s']:>12.1f}  {x['ratio']:>5.1f}x{via}")
                print("   (with --workers 2 the cached, un-augmented data is read in the main process: "
                      "datasets.cache.loader_workers)")
        data = None
        if not {"features", "eval"} <= skip:
            data = _frozen_set(args, work)
            model = create_model("clipseg", weights=None, size="base", freeze_image_encoder=True,
                                 freeze_text_encoder=True).to(device)
        fc = None
        if "features" not in skip:
            r, fc = bench_features(args, device, work, model, data)
            results["features"] = r
            print(f"\n2. frozen encoders, CLIPSeg base at {r['input']} px, {r['images']} {r['data']} images: one epoch")
            print(f"   recomputing the encoders {r['recompute_epoch_s']:.2f} s, from the feature cache "
                  f"{r['cached_epoch_s']:.2f} s: {r['ratio']:.1f}x (cache built once in {r['build_s']:.2f} s, "
                  f"{r['feature_MB']:.0f} MB)")
        if "eval" not in skip:
            r = results["eval"] = bench_eval(args, device, work, model, data, fc)
            print(f"\n3. evaluation, CLIPSeg base decoder from the feature cache, {r['images']} {r['data']} images: "
                  f"at the original size {r['original_size_s']:.3f} s, at the model size {r['model_size_s']:.3f} s: "
                  f"{r['ratio']:.2f}x")
        if data is not None:
            del model, fc
        if "models" not in skip:
            print(f"\n4. one step per full-size model (random weights), batch {args.model_batch}, "
                  f"{'AMP ' + str(amp_dtype(device)).replace('torch.', '') if not cpu else 'float32'}"
                  f"{', compiled' if args.compile and not cpu else ''}, {args.steps} timed step(s) after a warm-up "
                  f"{'forward' if cpu else 'step'}")
            head = f"   {'model':16s} {'input':>5} {'params':>8} {'train s/step':>12} {'eval s/step':>11}"
            head += f" {'train img/s':>11} {'eval img/s':>10}" + ("" if cpu else f" {'peak GiB':>8}")
            print(head)
            results["models"] = {}
            for name in filter(None, args.models.split(",")):
                try:
                    r = results["models"][name] = bench_model(name, args, device)
                except (ImportError, FileNotFoundError, ValueError, RuntimeError) as e:
                    print(f"   {name:16s} skipped: {str(e).splitlines()[0]}")
                    continue
                line = (f"   {name:16s} {r['input']:>5} {r['params_M']:>7.1f}M {r['train_s_per_step']:>12.3f} "
                        f"{r['eval_s_per_step']:>11.3f} {r['train_img_s']:>11.1f} {r['eval_img_s']:>10.1f}")
                print(line + ("" if cpu else f" {r['peak_GiB']:>8.2f}"), flush=True)
        if "peft" not in skip:
            print(f"\n5. ways to train CLIPSeg base (random weights), batch {args.model_batch}, one training step "
                  f"(docs/peft.md)")
            print(f"   {'method':18s} {'trainable':>12} {'share':>7} {'train s/step':>12} {'vs full':>8}"
                  + ("" if cpu else f" {'peak GiB':>8} {'vs full':>8}"))
            r = results["peft"] = bench_peft(args, device)
            full = r["full fine-tuning"]
            for label, x in r.items():
                line = (f"   {label:18s} {x['trainable']:>12,} {x['trainable'] / full['trainable']:>6.1%} "
                        f"{x['train_s_per_step']:>12.3f} {x['train_s_per_step'] / full['train_s_per_step']:>7.2f}x")
                if not cpu:
                    line += f" {x['peak_train_GiB']:>8.2f} {x['peak_train_GiB'] / full['peak_train_GiB']:>7.2f}x"
                print(line, flush=True)
        if "prompts" not in skip:
            print("\n6. the prompt explorer (vlsm/app), one image, the image encoded once:")
            r = results["prompts"] = bench_prompts(args, device)
            if r is None:
                print("   skipped: the app's extra is not installed (requirements-app.txt)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nratios (targets in brackets):")
    if results.get("data"):
        d = results["data"]
        print(f"   cached / paper-style data path: {d['workers0']['ratio']:.1f}x with 0 workers, "
              f"{d['workers2']['ratio']:.1f}x with 2 workers  [>= {TARGETS['data']:.0f}x]")
    if results.get("features"):
        print(f"   frozen-encoder epoch, recompute / feature cache: {results['features']['ratio']:.1f}x  "
              f"[>= {TARGETS['features']:.0f}x]")
    if results.get("eval"):
        print(f"   evaluation, original size / model size: {results['eval']['ratio']:.2f}x  [<= {TARGETS['eval']}x]")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
