"""``python -m models.doctor``: which pretrained weights each model needs, where they are looked for, whether
they are here, and the command that fetches each on a connected machine; then a load check of what is here.

    python -m models.doctor                       # every model; HF cache, torch/open_clip caches
    python -m models.doctor --weights /data/w     # also look in /data/w/<folder of each fetch command>
    python -m models.doctor --models clipseg --device cuda
    python -m models.doctor --tiny                # also check the tiny random models against their fingerprints

It never downloads and never opens a network connection (presence is read from disk only; weights that are
present are loaded from their local paths), so it answers the same offline (``VLSM_OFFLINE=1`` /
``HF_HUB_OFFLINE=1``) as online.  For each model whose weights are all present it builds the model, runs a
fixed input (:func:`fixed_input`: a bright disc on a gradient, prompt "polyp") and checks the logits' shape
and fingerprint (sum, absolute sum, standard deviation, 8 sample values; relative tolerance 1e-3) against
``models/doctor_checksums.json``.  An entry without a reference says "no reference checksum" and prints the
fingerprint it got (``--update-checksums`` stores it).

The fetch commands come from each model's record (``ModelSpec.fetch`` in models/registry.py).  Exit status:
1 when a present weight fails to load, gives a wrong shape or a different fingerprint (``--strict``: also when
a weight is missing), else 0.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys
from dataclasses import dataclass, field

from util.errors import run_cli

from .registry import BIOMEDCLIP_HUB_ID, CLIPSEG_HUB_ID, MODEL_SPECS, get_spec

CHECKSUMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doctor_checksums.json")
OPENAI_RN50_HUB_ID = "timm/resnet50_clip.openai"   # = models.cris.checkpoint.OPENAI_RN50_HF_REPO (tested)
RESNET50_HUB_ID = "smp-hub/resnet50.imagenet"      # smp's ImageNet ResNet-50 (pinned revision: in the fetch)
PROMPT = "polyp"
RTOL, ATOL = 1e-3, 1e-3


@dataclass(frozen=True)
class Need:
    """One set of pretrained weights: a Hugging Face repo and the files a model reads from it."""
    what: str
    hub_id: str
    files: tuple                  # groups of alternatives; one file of every group is needed
    as_folder: bool               # the model takes the folder (True) or the first group's file (False)
    open_clip: str | None = None  # the open_clip name of these weights
    also: tuple = ()              # other places: (label, glob pattern with ~ and $ENV expanded at run time)


NEEDS = {
    CLIPSEG_HUB_ID: Need("CLIPSeg (CLIP ViT-B/16 + rd64 refined decoder; transformers)", CLIPSEG_HUB_ID,
                         (("config.json",), ("model.safetensors", "pytorch_model.bin")), True),
    BIOMEDCLIP_HUB_ID: Need("BiomedCLIP ViT-B/16 + PubMedBERT (open_clip)", BIOMEDCLIP_HUB_ID,
                            (("open_clip_config.json",), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
                             ("vocab.txt",)), True, open_clip=f"hf-hub:{BIOMEDCLIP_HUB_ID}"),
    OPENAI_RN50_HUB_ID: Need("OpenAI CLIP RN50 (open_clip)", OPENAI_RN50_HUB_ID,
                             (("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),), False,
                             open_clip="RN50, pretrained='openai'",
                             also=(("open_clip URL cache", "~/.cache/clip/RN50.pt"),)),
    RESNET50_HUB_ID: Need("ImageNet ResNet-50 encoder (segmentation-models-pytorch)", RESNET50_HUB_ID,
                          (("model.safetensors",),), False,
                          also=(("torch hub cache (torchvision)", "{torch_hub}/checkpoints/resnet50-*.pth"),)),
}

#: model -> (hub ids of its weights; the first is what --weights takes, the others are build options)
MODEL_NEEDS = {"clipseg": (CLIPSEG_HUB_ID,), "cris": (OPENAI_RN50_HUB_ID,), "biomedclipseg": (BIOMEDCLIP_HUB_ID,),
               "biomedclipseg_d": (BIOMEDCLIP_HUB_ID, CLIPSEG_HUB_ID), "unet": (RESNET50_HUB_ID,),
               "unetplusplus": (RESNET50_HUB_ID,), "deeplabv3plus": (RESNET50_HUB_ID,)}
#: build options fed by the extra weights of a model
EXTRA_OPTION = {("biomedclipseg_d", CLIPSEG_HUB_ID): "clipseg_weights"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m models.doctor", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="a folder holding the fetched folders (the --local-dir of each fetch command)")
    p.add_argument("--models", default=",".join(MODEL_SPECS), help="comma-separated models (default: all)")
    p.add_argument("--no-load", action="store_true", help="only list; do not load what is present")
    p.add_argument("--device", default="cpu", help="device for the load check: cpu (default), cuda or auto")
    p.add_argument("--checksums", default=CHECKSUMS, help="reference fingerprints (default: models/"
                   "doctor_checksums.json)")
    p.add_argument("--update-checksums", action="store_true",
                   help="store the fingerprints computed now as the references (after checking them by hand)")
    p.add_argument("--tiny", action="store_true",
                   help="also build each tiny model (seed 0, random init) and check its fingerprint")
    p.add_argument("--strict", action="store_true", help="exit 1 when a weight is missing too")
    return p


# ------------------------------------------------------------------------------------------- places
def hf_cache_dir() -> str:
    """The Hugging Face hub cache, by huggingface_hub's rule, from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.path.expanduser(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def torch_hub_dir() -> str:
    import torch
    return torch.hub.get_dir()


ENV_VARS = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HUB_OFFLINE",
            "VLSM_OFFLINE")


def fetch_commands(model: str) -> list[str]:
    """The model record's fetch, one command per weight ("a && b" -> [a, b])."""
    return [c.strip() for c in get_spec(model).fetch.split("&&") if c.strip()]


def _option(tokens: list[str], name: str) -> str | None:
    for i, t in enumerate(tokens):
        if t == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if t.startswith(name + "="):
            return t.split("=", 1)[1]
    return None


@dataclass
class Found:
    hub_id: str
    need: Need
    command: str | None
    local_dir: str | None
    revision: str | None
    path: str | None = None        # what the model is given (folder or file); None = missing
    where: str | None = None       # which place had it
    looked: list = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.path is not None


def _find_files(folder: str, groups: tuple) -> list[str] | None:
    hits = []
    for group in groups:
        hit = next((os.path.join(folder, f) for f in group if os.path.isfile(os.path.join(folder, f))), None)
        if hit is None:
            return None
        hits.append(hit)
    return hits


def locate(model: str, hub_id: str, weights_dir: str | None = None) -> Found:
    """Where the weights ``hub_id`` of ``model`` are: the HF cache, ``weights_dir/<local dir>``, other caches.
    Reads the disk only."""
    from huggingface_hub import try_to_load_from_cache

    need = NEEDS[hub_id]
    command = next((c for c in fetch_commands(model) if hub_id in shlex.split(c)), None)
    tokens = shlex.split(command) if command else []
    found = Found(hub_id, need, command, _option(tokens, "--local-dir"), _option(tokens, "--revision"))
    cache = hf_cache_dir()
    hits = []
    for group in need.files:
        hit = None
        for f in group:
            h = try_to_load_from_cache(hub_id, f, cache_dir=cache, revision=found.revision)
            if isinstance(h, str) and os.path.isfile(h):
                hit = h
                break
        if hit is None:
            break
        hits.append(hit)
    repo_dir = os.path.join(cache, "models--" + hub_id.replace("/", "--"))
    found.looked.append(f"Hugging Face cache {repo_dir}" + (f" (revision {found.revision})" if found.revision else ""))
    if len(hits) == len(need.files):
        found.path, found.where = (os.path.dirname(hits[0]) if need.as_folder else hits[0]), "Hugging Face cache"
        return found
    if weights_dir and found.local_dir:
        folder = os.path.join(weights_dir, found.local_dir)
        found.looked.append(f"--weights {folder}")
        hits = _find_files(folder, need.files)
        if hits:
            found.path, found.where = (folder if need.as_folder else hits[0]), "--weights DIR"
            return found
    for label, pattern in need.also:
        pattern = os.path.expanduser(pattern.replace("{torch_hub}", torch_hub_dir()))
        found.looked.append(f"{label} {pattern}")
        hits = sorted(glob.glob(pattern))
        if hits:
            found.path, found.where = hits[0], label
            return found
    return found


# ------------------------------------------------------------------------------------------- checks
def fixed_input(size: int, mean, std):
    """A deterministic image: a horizontal gradient with a bright disc right of the centre, normalised."""
    import torch
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((ys - 0.45) ** 2 + (xs - 0.55) ** 2) < 0.04).float()
    img = torch.stack([0.3 + 0.4 * xs + 0.3 * disc, 0.2 + 0.3 * ys + 0.2 * disc, 0.25 + 0.1 * disc])
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return ((img.clamp(0, 1) - m) / s).unsqueeze(0)


def fingerprint(logits) -> dict:
    """Numbers that identify a logits tensor up to float noise."""
    import torch
    x = logits.detach().double().cpu()
    flat = x.flatten()
    idx = torch.linspace(0, flat.numel() - 1, 8).long()
    return {"shape": list(x.shape), "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()),
            "std": float(flat.std()) if flat.numel() > 1 else 0.0, "sample": [float(v) for v in flat[idx]]}


def compare(got: dict, ref: dict) -> str | None:
    """None when ``got`` matches ``ref`` (shape exactly, numbers within RTOL/ATOL), else what differs."""
    import numpy as np
    if list(got["shape"]) != list(ref.get("shape", got["shape"])):
        return f"shape {got['shape']} != reference {ref['shape']}"
    for key in ("sum", "abs_sum", "std", "sample"):
        if key in ref and not np.allclose(np.asarray(got[key]), np.asarray(ref[key]), rtol=RTOL, atol=ATOL):
            return f"{key} {got[key]} != reference {ref[key]}"
    return None


def run_fixed_input(model, device):
    import torch
    model = model.eval().to(device)
    x = fixed_input(model.input_size, model.image_mean, model.image_std).to(device)
    tokens = model.tokenize([PROMPT], device) if getattr(model, "uses_text", True) else {}
    with torch.no_grad():
        return model(x, **tokens).float()


def check_logits(logits, ref: dict | None, label: str) -> dict:
    """Shape and fingerprint check of one forward pass; ``ok`` is False on a failure."""
    import torch
    fp = fingerprint(logits)
    shape = fp["shape"]
    if len(shape) != 4 or shape[:2] != [1, 1] or not torch.isfinite(logits).all():
        return {"ok": False, "fingerprint": fp, "message": f"{label}: bad output {shape} (expected (1, 1, h, w), "
                                                          f"finite)"}
    if not ref:
        return {"ok": True, "fingerprint": fp, "message": f"{label}: output {tuple(shape)} ok; no reference "
                                                         f"checksum (sum {fp['sum']:.6g}, abs_sum {fp['abs_sum']:.6g})"}
    diff = compare(fp, ref)
    if diff:
        return {"ok": False, "fingerprint": fp, "message": f"{label}: output {tuple(shape)}; checksum MISMATCH: {diff}"}
    return {"ok": True, "fingerprint": fp, "message": f"{label}: output {tuple(shape)} ok; checksum matches "
                                                     f"(sum {fp['sum']:.6g})"}


def load_checksums(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checksum file {path} not found (models/doctor_checksums.json ships with the code)")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"checksum file {path} is not valid JSON: {e}") from None
    if not isinstance(table.get("models"), dict):
        raise ValueError(f"checksum file {path} needs a 'models' object (model -> fingerprint or {{}})")
    return table


def check_model(name: str, found: list[Found], refs: dict, device) -> dict:
    """Build ``name`` from the local paths in ``found`` and check it on the fixed input."""
    import torch

    from .registry import create_model
    kwargs = {EXTRA_OPTION[(name, f.hub_id)]: f.path for f in found[1:]}
    try:
        torch.manual_seed(0)
        model = create_model(name, weights=found[0].path, size="base", **kwargs)
        logits = run_fixed_input(model, device)
    except Exception as e:  # noqa: BLE001 - reported as this model's failure
        return {"ok": False, "message": f"load failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    ref = refs.get(name) or {}
    out = check_logits(logits, ref if ref.get("weights") in (None, found[0].hub_id) else {}, "fixed input")
    out["fingerprint"]["weights"] = found[0].hub_id
    return out


def check_tiny(name: str, refs: dict) -> dict:
    """Tiny random model (seed 0, CPU) on the fixed input against its stored fingerprint."""
    import torch

    from .registry import create_model
    try:
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = create_model(name, weights=None, size="tiny")
        logits = run_fixed_input(model, torch.device("cpu"))
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "message": f"tiny build failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return check_logits(logits, refs.get(name) or {}, "tiny (seed 0)")


# ------------------------------------------------------------------------------------------- report
def diagnose(models: list[str] | None = None, weights_dir: str | None = None, load: bool = True, device="cpu",
             checksums: str = CHECKSUMS, tiny: bool = False) -> dict:
    """Everything the doctor prints, as a dict (see :func:`format_report`)."""
    models = models or list(MODEL_SPECS)
    for m in models:
        get_spec(m)
        if m not in MODEL_NEEDS:
            raise ValueError(f"the doctor does not know the weights of model '{m}'; add it to models/doctor.py")
    if weights_dir and not os.path.isdir(weights_dir):
        raise FileNotFoundError(f"--weights {weights_dir} is not a folder")
    table = load_checksums(checksums)
    refs, tiny_refs = table["models"], table.get("tiny", {})
    report = {"env": {k: os.environ.get(k) for k in ENV_VARS}, "hf_cache": hf_cache_dir(),
              "torch_hub": torch_hub_dir(), "weights_dir": weights_dir, "models": {}}
    import torch
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    for m in models:
        found = [locate(m, h, weights_dir) for h in MODEL_NEEDS[m]]
        entry = {"default_weights": get_spec(m).default_weights, "fetch": get_spec(m).fetch, "weights": found}
        if not all(f.present for f in found):
            has_ref = bool(refs.get(m))
            entry["check"] = {"ok": None, "message": "not loaded (weights missing); "
                              + ("a reference checksum is stored" if has_ref else "no reference checksum")}
        elif not load:
            entry["check"] = {"ok": None, "message": "not loaded (--no-load)"}
        else:
            entry["check"] = check_model(m, found, refs, dev)
        if tiny:
            entry["tiny"] = check_tiny(m, tiny_refs)
        report["models"][m] = entry
    return report


def _pass_hint(model: str, f: Found) -> str:
    option = EXTRA_OPTION.get((model, f.hub_id))
    if option:  # not a command-line option: read from the HF cache
        return (f"{model} reads it from the Hugging Face cache ({option}=auto): copy the connected machine's "
                f"{os.path.join('<HF cache>', 'models--' + f.hub_id.replace('/', '--'))} into this machine's HF cache")
    target = f"/path/to/{f.local_dir}" if f.local_dir else "the downloaded folder"
    if not f.need.as_folder:
        target += f"/{f.need.files[0][0]}"
    return (f"copy the folder here and pass --weights {target} (or python -m models.doctor --weights /path/to "
            f"to check it)")


def format_report(report: dict) -> str:
    env = report["env"]
    offline = [k for k in ("VLSM_OFFLINE", "HF_HUB_OFFLINE") if (env.get(k) or "0").lower() in ("1", "true", "yes",
                                                                                                   "on")]
    lines = ["Weights doctor (reads the disk only; never downloads)",
             f"  downloads by the models: {'off (' + ', '.join(offline) + ')' if offline else 'allowed when online'}",
             f"  Hugging Face cache: {report['hf_cache']}",
             f"  torch hub cache:    {report['torch_hub']}",
             f"  --weights DIR:      {report['weights_dir'] or '(not given)'}",
             "  environment: " + ", ".join(f"{k}={env[k] if env[k] is not None else '(unset)'}" for k in ENV_VARS)]
    present: dict[str, bool] = {}
    failed, ready = [], []
    for m, e in report["models"].items():
        lines += ["", f"{m}  (--weights auto = {e['default_weights']})"]
        for f in e["weights"]:
            present[f.hub_id] = f.present
            files = " + ".join("|".join(g) for g in f.need.files)
            tag = f"; open_clip: {f.need.open_clip}" if f.need.open_clip else ""
            lines.append(f"  [{'present' if f.present else 'missing'}] {f.need.what}: Hugging Face {f.hub_id} "
                         f"({files}{tag})")
            if f.present:
                lines.append(f"      found in {f.where}: {f.path}")
            else:
                lines.append("      looked in: " + "; ".join(f.looked))
                lines.append(f"      fetch on a connected machine: {f.command or '(no fetch command in the record)'}")
                lines.append(f"      then {_pass_hint(m, f)}")
        check = e["check"]
        lines.append(f"  check: {check['message']}")
        if check["ok"] is False:
            failed.append(m)
        elif check["ok"]:
            ready.append(m)
        if "tiny" in e:
            lines.append(f"  {e['tiny']['message']}")
            if not e["tiny"]["ok"]:
                failed.append(f"{m} (tiny)")
    missing = [h for h, ok in present.items() if not ok]
    lines += ["", f"Summary: {len(present) - len(missing)} of {len(present)} weights present"
              + (f" (missing: {', '.join(missing)})" if missing else "")
              + f"; checked ok: {', '.join(ready) or 'none'}; failed: {', '.join(failed) or 'none'}"]
    return "\n".join(lines)


def main(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    report = diagnose(models, args.weights, not args.no_load, args.device, args.checksums, args.tiny)
    print(format_report(report))
    if args.update_checksums:
        print(f"updated {args.checksums}: {', '.join(write_checksums(report, args.checksums)) or 'nothing to store'}")
    failed = any(e["check"]["ok"] is False or (e.get("tiny") and not e["tiny"]["ok"])
                 for e in report["models"].values())
    missing = any(not f.present for e in report["models"].values() for f in e["weights"])
    return 1 if failed or (args.strict and missing) else 0


def write_checksums(report: dict, path: str) -> list[str]:
    """Store the fingerprints computed in ``report`` as the references in ``path``; returns what was stored."""
    table = load_checksums(path)
    changed = []
    for m, e in report["models"].items():
        if e["check"].get("fingerprint"):
            table["models"][m] = e["check"]["fingerprint"]
            changed.append(m)
        if e.get("tiny", {}).get("fingerprint"):
            table.setdefault("tiny", {})[m] = e["tiny"]["fingerprint"]
            changed.append(f"{m} (tiny)")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return changed


def _cli(args) -> None:
    code = main(args)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_cli(_cli, get_args_parser())
