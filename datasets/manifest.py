"""JSON-manifest datasets (compatible with the paper code's manifests).

A manifest is a list of records ``{"img_name", "mask_name", "prompts": {"p0": str | [str], ...}, ...}``.
Images are read from ``image_dir/img_name`` and masks from ``mask_dir/mask_name``.

Prompt choice (``prompt=``):
- ``"p3"`` or any key present in the records: that key;
- ``"random"``: a random key among the record's keys, drawn anew per sample per step (training);
- a list value is sampled at random in training and the first item is used in evaluation,
  unless ``all_prompts=True``, which yields one sample per (record, prompt text).
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .io import BadSampleError, read_image, read_mask
from .transforms import SegTransform

REQUIRED_FIELDS = {"img_name": str, "mask_name": str, "prompts": dict}


class ManifestError(ValueError):
    pass


def load_manifest(path: str) -> list[dict]:
    """Read and validate a manifest; errors name the file, the record index and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}. Prepare the dataset first "
                            f"(python -m datasets.prepare NAME --src FOLDER) or check --prompts-root") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest {path} is not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise ManifestError(f"manifest {path} must be a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ManifestError(f"manifest {path} is empty")
    seen = {}
    for i, r in enumerate(records):
        where = f"manifest {path}, record {i}"
        if not isinstance(r, dict):
            raise ManifestError(f"{where}: expected an object with img_name, mask_name, prompts; got {type(r).__name__}")
        for key, typ in REQUIRED_FIELDS.items():
            if key not in r:
                raise ManifestError(f"{where}: missing field '{key}' (each record needs img_name, mask_name, prompts)")
            if not isinstance(r[key], typ):
                raise ManifestError(f"{where}: field '{key}' must be {typ.__name__}, got {type(r[key]).__name__}")
        for key in ("img_name", "mask_name"):  # names stay inside images/ and masks/ (subfolders are fine)
            parts = r[key].replace("\\", "/").split("/")
            if not r[key] or os.path.isabs(r[key]) or not parts[0] or ".." in parts or r[key][1:3] in (":/", ":\\"):
                raise ManifestError(f"{where}: {key} {r[key]!r} is empty, absolute or climbs out of its folder with "
                                    f"'..'; names must be relative paths inside the dataset's images/ or masks/ "
                                    f"folder (e.g. 'case1/img001.png')")
        for k, v in r["prompts"].items():
            ok = isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(s, str) for s in v))
            if not ok:
                raise ManifestError(f"{where}: prompt '{k}' must be a string or a non-empty list of strings, got {v!r:.80}")
        ident = (r["img_name"], r["mask_name"], json.dumps(r["prompts"], sort_keys=True))
        if ident in seen:
            raise ManifestError(f"{where}: duplicate of record {seen[ident]} (same image, mask and prompts); "
                                f"remove one of them")
        seen[ident] = i
    return records


def write_json_atomic(path: str, obj, ensure_ascii: bool = True) -> None:
    """Write JSON (indent 1, trailing newline) through a temporary file in the same folder and ``os.replace``:
    a manifest is never half-written, and a failed write leaves the old one and no temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=ensure_ascii)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@dataclass
class Sample:
    record: int      # index into records
    text_idx: int    # index into a list prompt (all_prompts); -1 = choose by mode


class ManifestDataset(Dataset):
    def __init__(self, manifest: str | list[dict], image_dir: str, mask_dir: str, prompt: str = "p1",
                 transform: SegTransform | None = None, train: bool = False, all_prompts: bool = False,
                 return_original: bool = False, on_bad_sample: str = "error",
                 name: str = ""):
        self.manifest_path = manifest if isinstance(manifest, str) else "<records>"
        self.records = load_manifest(manifest) if isinstance(manifest, str) else manifest
        self.image_dir, self.mask_dir = image_dir, mask_dir
        self.prompt, self.train, self.all_prompts = prompt, train, all_prompts
        self.transform = transform
        self.return_original = return_original
        if on_bad_sample not in ("error", "skip"):
            raise ValueError("on_bad_sample must be 'error' or 'skip'")
        self.on_bad_sample = on_bad_sample
        self.name = name or os.path.basename(os.path.dirname(self.manifest_path))
        self._check_prompt_key()
        self.samples = self._index()

    def _check_prompt_key(self) -> None:
        if self.prompt == "random":
            return
        for i, r in enumerate(self.records):
            if self.prompt not in r["prompts"]:
                have = ", ".join(sorted(r["prompts"])) or "none"
                raise ManifestError(
                    f"manifest {self.manifest_path}, record {i} ({r['img_name']}): no prompt '{self.prompt}' "
                    f"(it has: {have}). Run make_prompts.py for this dataset or choose another --prompt")

    def _index(self) -> list[Sample]:
        if not self.all_prompts or self.prompt == "random":
            return [Sample(i, -1) for i in range(len(self.records))]
        out = []
        for i, r in enumerate(self.records):
            v = r["prompts"][self.prompt]
            out += [Sample(i, j) for j in range(len(v))] if isinstance(v, list) else [Sample(i, -1)]
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def text_for(self, index: int) -> str:
        s = self.samples[index]
        prompts = self.records[s.record]["prompts"]
        key = self.prompt
        if key == "random":
            key = random.choice(sorted(prompts)) if self.train else sorted(prompts)[0]
        v = prompts[key]
        if isinstance(v, str):
            return v
        if s.text_idx >= 0:
            return v[s.text_idx]
        return random.choice(v) if self.train else v[0]

    def paths(self, index: int) -> tuple[str, str]:
        r = self.records[self.samples[index].record]
        return os.path.join(self.image_dir, r["img_name"]), os.path.join(self.mask_dir, r["mask_name"])

    def load(self, index: int) -> dict:
        rec_idx = self.samples[index].record
        img_path, mask_path = self.paths(index)
        size = self.transform.size if self.transform else None
        img, (h, w) = read_image(img_path, draft_size=None if self.return_original else size)
        mask = read_mask(mask_path)
        if mask.shape != (h, w):
            raise BadSampleError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {img_path} is "
                                 f"{w}x{h}; masks must have their image's size (record {rec_idx} of "
                                 f"{self.manifest_path})")
        return {"pil": img, "mask": mask, "orig_size": (h, w)}

    def __getitem__(self, index: int) -> dict | None:
        try:
            raw = self.load(index)
        except BadSampleError as e:
            if self.on_bad_sample == "skip":
                return {"skipped": f"{self.name}[{index}]: {e}"}
            raise BadSampleError(f"{e} [dataset {self.name}, sample {index}]") from None
        image, mask = (self.transform(raw["pil"], raw["mask"]) if self.transform
                       else (raw["pil"], torch.from_numpy(raw["mask"])))
        rec = self.records[self.samples[index].record]
        item = {"image": image, "mask": mask, "text": self.text_for(index),
                "orig_size": torch.tensor(raw["orig_size"]), "name": rec["img_name"],
                "mask_name": rec["mask_name"], "index": index, "dataset": self.name}
        if self.return_original:
            item["orig_mask"] = torch.from_numpy(raw["mask"])
        return item


def collate(items: list[dict]) -> dict:
    """Stack fixed-size tensors, keep the rest as lists; samples skipped by ``on_bad_sample=skip`` are reported."""
    skipped = [it["skipped"] for it in items if "skipped" in it]
    items = [it for it in items if "skipped" not in it]
    batch: dict = {"skipped": skipped}
    if not items:
        return batch
    for k in items[0]:
        vals = [it[k] for it in items]
        if k in ("image", "mask", "orig_size"):
            batch[k] = torch.stack(vals)
        else:
            batch[k] = vals
    return batch


def swap_prompts(records: list[dict]) -> tuple[list[dict], int]:
    """Give every record the prompts of another target in the same image (mismatched-prompt control).

    Records whose image has no other target are dropped; returns (new records, number dropped).
    A model that uses its text should score far lower on the swapped set.
    """
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_image.setdefault(r["img_name"], []).append(i)
    out, dropped = [], 0
    for i, r in enumerate(records):
        others = [j for j in by_image[r["img_name"]] if records[j]["mask_name"] != r["mask_name"]]
        if not others:
            dropped += 1
            continue
        later = [o for o in others if o > i]
        j = later[0] if later else others[0]  # the next target of the same image, cyclically
        out.append({**r, "prompts": records[j]["prompts"], "swapped_from": j})
    return out, dropped
