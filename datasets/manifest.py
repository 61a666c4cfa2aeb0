"""JSON-manifest datasets (compatible with the paper code's manifests).

A manifest is a list of records ``{"img_name", "mask_name", "prompts": {"p0": str | [str], ...}, ...}``.
Images are read from ``image_dir/img_name`` and masks from ``mask_dir/mask_name``.

Prompt choice (``prompt=``):
- ``"p3"`` or any key present in the records: that key;
- ``"random"``: a key among the record's non-empty prompts (never P0, the empty prompt; as the paper's code),
  drawn anew per sample per step in training; in validation and test one key per record, drawn from a fixed
  seed (:data:`EVAL_PROMPT_SEED`, the record's image and mask names), so every epoch and every evaluation
  sees the same prompts;
- a list value is sampled at random in training and the first item is used in evaluation,
  unless ``all_prompts=True``, which yields one sample per (record, prompt text).
Each item carries ``prompt_key``, the key its text came from.

Records may carry any other fields (the paper's ``bbox, cat, segment_id, sentences, sentences_num``,
``datasets.prepare``'s metadata).  A record that repeats an earlier one's image and mask is a duplicate: a
warning names both indices; it is kept (the paper trained on its duplicates) unless ``drop_duplicates``.

A record of a medical file (``datasets.make_manifest`` on DICOM or volumes) carries ``"reader"``: the frame or
slice/axis and the window that ``datasets.medical`` chose, passed back to ``read_image``/``read_mask`` so that
every reading gives the pixels the manifest was made from; the slices of one volume share ``img_name`` and
differ by ``reader`` (they are not duplicates).
"""
from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .io import BadSampleError, read_image, read_mask
from .medical import image_position
from .transforms import SegTransform

REQUIRED_FIELDS = {"img_name": str, "mask_name": str, "prompts": dict}
EXPECTED_SHAPE = ('a JSON list of records {"img_name": str, "mask_name": str, "prompts": {"p0": str | [str], '
                  '...}, ...} (the format of the paper\'s released data/<name>/anns/*.json)')
#: Seed of the per-record prompt keys that ``prompt="random"`` gives in validation and test.
EVAL_PROMPT_SEED = 0


class ManifestError(ValueError):
    pass


class ManifestWarning(UserWarning):
    """Something in a manifest that is kept but worth knowing (duplicate records)."""


def _read_json(path: str):
    if os.path.isdir(path):
        raise ManifestError(f"manifest {path} is a folder (an LMDB database or an image folder?); expected "
                            f"{EXPECTED_SHAPE}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}. Prepare the dataset first "
                            f"(python -m datasets.prepare NAME --src FOLDER), import the paper's manifests "
                            f"(python -m datasets.import_manifests) or check --prompts-root") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path} is not a UTF-8 text file (a binary database such as LMDB?); "
                            f"expected {EXPECTED_SHAPE}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest {path} is not valid JSON: {e}; expected {EXPECTED_SHAPE}") from None


def _shape_error(path: str, obj) -> ManifestError:
    if isinstance(obj, dict):
        keys = ", ".join(sorted(map(str, obj))[:8])
        kind = ("a COCO annotation file" if {"images", "annotations"} & set(obj) else
                "a JSON object" + (f" with keys {keys}" if keys else ""))
        return ManifestError(f"manifest {path} is {kind}, not a list of records; expected {EXPECTED_SHAPE}. "
                             f"Write such records yourself, or build them from folders of images and masks with "
                             f"python -m datasets.make_manifest (the paper's manifests load as they are: "
                             f"python -m datasets.import_manifests)")
    return ManifestError(f"manifest {path} must be {EXPECTED_SHAPE}; got {type(obj).__name__}")


def find_duplicates(records: list[dict]) -> list[tuple[int, int]]:
    """(earlier index, later index) for each record whose image and mask (and frame or slice) repeat an earlier
    record's."""
    first: dict[tuple, int] = {}
    out = []
    for i, r in enumerate(records):
        key = (r["img_name"], r["mask_name"], image_position(r))
        if key in first:
            out.append((first[key], i))
        else:
            first[key] = i
    return out


def load_manifest(path: str, drop_duplicates: bool = False, allow_empty: bool = False,
                  records: list | None = None) -> list[dict]:
    """Read and validate a manifest; errors name the file, the record index and the fix.

    A duplicate record (same image and mask as an earlier one) is a :class:`ManifestWarning` naming both
    indices; it is kept unless ``drop_duplicates``.  An empty list is an error unless ``allow_empty`` (a
    test-only dataset's ``val.json``).  ``records``: validate these instead of reading ``path`` (which then
    only names them in messages)."""
    records = _read_json(path) if records is None else records
    if not isinstance(records, list):
        raise _shape_error(path, records)
    if not records and not allow_empty:
        raise ManifestError(f"manifest {path} is empty (no records): nothing to train, validate or test on. A "
                            f"test-only dataset's val.json may be empty, but it cannot be used for training")
    for i, r in enumerate(records):
        where = f"manifest {path}, record {i}"
        if not isinstance(r, dict):
            raise ManifestError(f"{where}: expected an object with img_name, mask_name, prompts; got {type(r).__name__}"
                                f" (a manifest is {EXPECTED_SHAPE})")
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
        if "reader" in r and not isinstance(r["reader"], dict):
            raise ManifestError(f"{where}: field 'reader' must be an object (frame, slice, axis, window), got "
                                f"{type(r['reader']).__name__}")
        for k, v in r["prompts"].items():
            ok = isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(s, str) for s in v))
            if not ok:
                raise ManifestError(f"{where}: prompt '{k}' must be a string or a non-empty list of strings, "
                                    f"got {v!r:.80}")
    dupes = find_duplicates(records)
    if dupes:
        shown = "; ".join(f"record {j} repeats record {i} ({records[j]['img_name']}, {records[j]['mask_name']})"
                          for i, j in dupes[:20]) + (f"; ... {len(dupes) - 20} more" if len(dupes) > 20 else "")
        action = "dropped (--drop-duplicates)" if drop_duplicates else "kept (pass --drop-duplicates to drop them)"
        warnings.warn(f"manifest {path}: {len(dupes)} duplicate record(s), same image and mask as an earlier "
                      f"record: {shown}; {action}", ManifestWarning, stacklevel=2)
        if drop_duplicates:
            later = {j for _, j in dupes}
            records = [r for i, r in enumerate(records) if i not in later]
    return records


def nonempty_keys(prompts: dict) -> list[str]:
    """The keys whose prompt has text (P0, the empty prompt, is never drawn by ``random``), sorted."""
    return [k for k in sorted(prompts) if any(t.strip() for t in ([prompts[k]] if isinstance(prompts[k], str)
                                                                   else prompts[k]))]


def eval_prompt_key(record: dict, keys: list[str], seed: int = EVAL_PROMPT_SEED) -> str:
    """The key ``random`` gives ``record`` in validation and test: drawn from ``seed`` and the record's image and
    mask names, so it is the same in every epoch and every run, whatever the order or filtering of the records."""
    return random.Random(f"{seed}:{record['img_name']}:{record['mask_name']}").choice(keys)


@dataclass
class Sample:
    record: int      # index into records
    text_idx: int    # index into a list prompt (all_prompts); -1 = choose by mode


class ManifestDataset(Dataset):
    def __init__(self, manifest: str | list[dict], image_dir: str, mask_dir: str, prompt: str = "p1",
                 transform: SegTransform | None = None, train: bool = False, all_prompts: bool = False,
                 return_original: bool = False, on_bad_sample: str = "error",
                 name: str = "", cache_dir: str | None = None, drop_duplicates: bool = False,
                 target: str | None = None, class_names: tuple | list | None = None):
        self.manifest_path = manifest if isinstance(manifest, str) else "<records>"
        self.records = load_manifest(manifest, drop_duplicates) if isinstance(manifest, str) else manifest
        if target:  # --target: the records of one structure or pathology (datasets.targets)
            from .targets import filter_target
            self.records = filter_target(self.records, target, self.manifest_path)
        if not self.records:
            raise ManifestError(f"manifest {self.manifest_path} has no records (a test-only dataset's empty "
                                f"val.json?): it cannot be used to train, validate or test")
        # --multiclass models: each item names its class's output channel (``target_index``)
        self.class_names = tuple(class_names) if class_names else None
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
        self.cache = None  # datasets.cache.DataCache once use_cache() ran: uint8 images, normalised on the device
        if cache_dir:
            self.use_cache(cache_dir)

    def use_cache(self, cache_dir: str) -> "ManifestDataset":
        """Read decoded, resized images and masks from the data cache under ``cache_dir`` (built or rebuilt
        here when missing or stale; datasets/cache.py).  Items then carry uint8 images."""
        if any(image_position(r) != (None, None, None) for r in self.records):
            # the cache keeps one image per img_name; frames and slices of one file share it: read them per sample
            warnings.warn(f"{self.name or self.manifest_path}: records name frames or slices of one file; the data "
                          f"cache keys images by file name, so these are decoded per sample", ManifestWarning,
                          stacklevel=2)
            return self
        from .cache import DataCache
        self.cache = DataCache.for_dataset(self, cache_dir)
        return self

    def _check_prompt_key(self) -> None:
        if self.prompt == "random":
            for i, r in enumerate(self.records):
                if not nonempty_keys(r["prompts"]):
                    raise ManifestError(f"manifest {self.manifest_path}, record {i} ({r['img_name']}): --prompt "
                                        f"random draws among the non-empty prompts and this record has none "
                                        f"(it has: {', '.join(sorted(r['prompts'])) or 'none'}). Run "
                                        f"make_prompts.py for this dataset or choose a --prompt key")
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

    def prompt_for(self, index: int) -> tuple[str, str]:
        """(prompt key, text) of sample ``index`` (module docstring: ``random``, list values)."""
        s = self.samples[index]
        rec = self.records[s.record]
        prompts = rec["prompts"]
        key = self.prompt
        if key == "random":
            keys = nonempty_keys(prompts)
            key = random.choice(keys) if self.train else eval_prompt_key(rec, keys)
        v = prompts[key]
        if isinstance(v, str):
            return key, v
        if s.text_idx >= 0:
            return key, v[s.text_idx]
        return key, (random.choice(v) if self.train else v[0])

    def text_for(self, index: int) -> str:
        return self.prompt_for(index)[1]

    def target_index(self, rec_idx: int) -> int:
        """The output channel of record ``rec_idx``'s class for a ``--multiclass`` model."""
        from .targets import record_target
        t = record_target(self.records[rec_idx])
        if t not in self.class_names:
            raise ManifestError(f"manifest {self.manifest_path}, record {rec_idx} "
                                f"({self.records[rec_idx]['img_name']}): class {t!r} is not one of the model's "
                                f"output classes {list(self.class_names)}")
        return self.class_names.index(t)

    def _extras(self, index: int, item: dict) -> dict:
        """The prompt (key and text), for --multiclass models the class channel, and in evaluation the record's
        pixel spacing ((row, col) mm, or None: HD95 in millimetres where every record has one) and, for a frame
        or slice of a file, where it is (``position``, a string for per_image.csv)."""
        item["prompt_key"], item["text"] = self.prompt_for(index)
        rec = self.records[self.samples[index].record]
        if self.class_names:
            item["target_index"] = self.target_index(self.samples[index].record)
        if self.return_original:
            item["spacing"] = tuple(float(v) for v in rec["spacing"]) if rec.get("spacing") else None
            pos = image_position(rec)
            if pos != (None, None, None):
                item["position"] = ",".join(f"{k}={v}" for k, v in zip(("frame", "slice", "axis"), pos)
                                            if v is not None)
        return item

    def paths(self, index: int) -> tuple[str, str]:
        r = self.records[self.samples[index].record]
        return os.path.join(self.image_dir, r["img_name"]), os.path.join(self.mask_dir, r["mask_name"])

    def load(self, index: int) -> dict:
        rec_idx = self.samples[index].record
        img_path, mask_path = self.paths(index)
        size = self.transform.size if self.transform else None
        rec = self.records[rec_idx]
        try:
            image_opts, mask_opts = reader_options(rec), reader_options(rec, mask=True)
        except ValueError as e:
            raise BadSampleError(f"record {rec_idx} of {self.manifest_path}: {e}") from None
        img, (h, w) = read_image(img_path, draft_size=None if self.return_original else size, **image_opts)
        mask = read_mask(mask_path, **mask_opts)
        if mask.shape != (h, w):
            raise BadSampleError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {img_path} is "
                                 f"{w}x{h}; masks must have their image's size (record {rec_idx} of "
                                 f"{self.manifest_path})")
        return {"pil": img, "mask": mask, "orig_size": (h, w)}

    def __getitem__(self, index: int) -> dict | None:
        if self.cache is not None:
            return self._cached_item(index)
        try:
            raw = self.load(index)
        except BadSampleError as e:
            if self.on_bad_sample == "skip":
                return {"skipped": f"{self.name}[{index}]: {e}"}
            raise BadSampleError(f"{e} [dataset {self.name}, sample {index}]") from None
        image, mask = (self.transform(raw["pil"], raw["mask"]) if self.transform
                       else (raw["pil"], torch.from_numpy(raw["mask"])))
        rec = self.records[self.samples[index].record]
        item = self._extras(index, {"image": image, "mask": mask, "orig_size": torch.tensor(raw["orig_size"]),
                                    "name": rec["img_name"], "mask_name": rec["mask_name"], "index": index,
                                    "dataset": self.name})
        if self.return_original:
            item["orig_mask"] = torch.from_numpy(raw["mask"])
        return item

    def _cached_item(self, index: int) -> dict:
        """``__getitem__`` from the data cache: the same keys; the image as uint8 (augmented on the uint8
        tensor, with the same random draws in the same order as the per-sample path) and the mask as uint8 {0, 1}
        (half the bytes through the workers' queues; the loss and the metrics take either)."""
        rec_idx = self.samples[index].record
        try:
            raw = self.cache.get(rec_idx, self.return_original)
        except BadSampleError as e:
            if self.on_bad_sample == "skip":
                return {"skipped": f"{self.name}[{index}]: {e}"}
            raise BadSampleError(f"{e} [dataset {self.name}, sample {index}]") from None
        image = self.transform.augment_uint8(raw["image"])
        return self._cached_fields(index, rec_idx, image, raw["mask"][None],
                                   torch.tensor(raw["orig_size"]), raw.get("orig_mask"))

    def _cached_fields(self, index: int, rec_idx: int, image, mask, orig_size, orig_mask) -> dict:
        rec = self.records[rec_idx]
        item = self._extras(index, {"image": image, "mask": mask, "orig_size": orig_size, "name": rec["img_name"],
                                    "mask_name": rec["mask_name"], "index": index, "dataset": self.name})
        if self.return_original:
            item["orig_mask"] = orig_mask
        return item

    def __getitems__(self, indices: list[int]):
        """A whole batch (DataLoader's batched fetch): from the data cache, already collated, the images and
        masks read in one copy each; otherwise (or when a sample of the batch is bad) the items one by one."""
        if self.cache is None or not indices or any(self.samples[i].record in self.cache.bad for i in indices):
            return [self[i] for i in indices]
        recs = [self.samples[i].record for i in indices]
        raw = self.cache.get_batch(recs, self.return_original)
        masks = raw["mask"][:, None]
        items = []
        for k, (i, r) in enumerate(zip(indices, recs)):  # per sample, in order: the per-sample path's random draws
            if self.transform.augment:
                raw["image"][k] = self.transform.augment_uint8(raw["image"][k])
            items.append(self._cached_fields(i, r, None, None, None, raw["orig_mask"][k] if self.return_original
                                             else None))
        batch: dict = {"skipped": []}
        for key in items[0]:
            batch[key] = [it[key] for it in items]
        batch.update(image=raw["image"], mask=masks, orig_size=raw["orig_size"])
        return batch


def reader_options(record: dict, mask: bool = False) -> dict:
    """The ``read_image``/``read_mask`` keyword arguments a record keeps under ``reader`` ({} for plain files)."""
    if not record.get("reader"):
        return {}
    from .medical import reader_options as options
    return options(record, mask)


def collate(items: list[dict]) -> dict:
    """Stack fixed-size tensors, keep the rest as lists; samples skipped by ``on_bad_sample=skip`` are reported.
    A batch collated already (``ManifestDataset.__getitems__`` from the data cache) is returned as it is."""
    if isinstance(items, dict):
        return items
    skipped = [it["skipped"] for it in items if "skipped" in it]
    items = [it for it in items if "skipped" not in it]
    batch: dict = {"skipped": skipped}
    if not items:
        return batch
    keys = list(dict.fromkeys(k for it in items for k in it))  # a field only some items have: None elsewhere
    for k in keys:
        vals = [it.get(k) for it in items]
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
    by_image: dict[tuple, list[int]] = {}  # an image is a file, or a frame/slice of one
    for i, r in enumerate(records):
        by_image.setdefault((r["img_name"], image_position(r)), []).append(i)
    out, dropped = [], 0
    for i, r in enumerate(records):
        others = [j for j in by_image[(r["img_name"], image_position(r))] if records[j]["mask_name"] != r["mask_name"]]
        if not others:
            dropped += 1
            continue
        later = [o for o in others if o > i]
        j = later[0] if later else others[0]  # the next target of the same image, cyclically
        out.append({**r, "prompts": records[j]["prompts"], "swapped_from": j})
    return out, dropped
