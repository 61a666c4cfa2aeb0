"""The data cache: every image and mask of a manifest decoded and resized once, then memory-mapped.

One cache folder per (dataset, manifest, input size, decode mode) under a cache root (``--cache-dir``, default
``<data_root>/.cache/``)::

    <cache_dir>/<dataset>/<manifest stem>-<size>px-<key>/
        images.u8    uint8 [n_images, 3, S, S]   the image at the model's input size (not normalised)
        masks.u8     uint8 [n_masks, S, S]       the mask at the model's input size, {0, 1}
        orig.bits    np.packbits of every mask at its original size, one after the other
        index.npy    int64 [n_masks, 3]          (offset into orig.bits, height, width)
        sizes.npy    int64 [n_images, 2]         each image's original (height, width)
        meta.json    version, size, decode mode, manifest hash, every source file's (size, mtime), the
                     records that could not be read (--on-bad-sample skip); written last

The pixels are exactly those of the per-sample path (``SegTransform.resize`` after ``ManifestDataset.load``);
normalisation happens on the device (``util.runtime.prepare_images``).

Trust rules: a folder is used only when its ``meta.json`` exists, has this version, the same size, decode
mode and manifest hash, every data file has its expected length and every source file still has the size and
mtime it had at build time; anything else (stale, another version, half-written) is rebuilt.  A build writes
into a temporary folder, writes ``meta.json`` last and renames the folder into place, so a killed build never
leaves a folder that passes these checks; a full disk gives :class:`CacheError` and removes the partial folder.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .io import BadSampleError

CACHE_VERSION = 1
DATA_FILES = ("images.u8", "masks.u8", "orig.bits", "index.npy", "sizes.npy")


class CacheError(ValueError):
    """The cache cannot be written (full disk, no permission).  A ValueError, so the scripts print one line."""


def _stat(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def records_hash(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DataCache:
    """The cache of one :class:`~datasets.manifest.ManifestDataset`; ``get(record)`` reads one sample."""

    def __init__(self, folder: str, meta: dict, record_slots: list[tuple[int, int]]):
        self.folder = folder
        self.meta = meta
        self.size = int(meta["size"])
        self.record_slots = record_slots
        self.bad = {int(k): v for k, v in meta.get("bad_records", {}).items()}
        self._maps = None

    # ---- opening -------------------------------------------------------------------------------------------
    @classmethod
    def for_dataset(cls, ds, cache_dir: str) -> "DataCache":
        """Open the valid cache of ``ds`` under ``cache_dir``, building (or rebuilding) it when needed."""
        if ds.transform is None:
            raise ValueError("the data cache needs a transform (the model's input size)")
        size = ds.transform.size
        draft = not ds.return_original  # the decode mode of ManifestDataset.load
        image_names, mask_names, slots = _slots(ds.records)
        rhash = records_hash(ds.records)
        ident = {"version": CACHE_VERSION, "image_dir": os.path.abspath(ds.image_dir),
                 "mask_dir": os.path.abspath(ds.mask_dir), "size": size, "draft": draft,
                 "manifest": os.path.abspath(ds.manifest_path) if ds.manifest_path != "<records>" else rhash}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        stem = os.path.splitext(os.path.basename(ds.manifest_path))[0] if ds.manifest_path != "<records>" else "records"
        parent = os.path.join(cache_dir, ds.name or "dataset")
        folder = os.path.join(parent, f"{stem}-{size}px-{key}")
        expect = dict(ident, records_hash=rhash, n_images=len(image_names), n_masks=len(mask_names))
        meta = _valid_meta(folder, expect, ds, image_names, mask_names)
        if meta is None:
            meta = _build(ds, folder, parent, expect, image_names, mask_names, slots)
        cache = cls(folder, meta, slots)
        if cache.bad and ds.on_bad_sample == "error":  # built by a run that skipped bad samples
            rec, msg = min(cache.bad.items())
            sample = next((k for k, smp in enumerate(ds.samples) if smp.record == rec), rec)
            raise BadSampleError(f"{msg} [dataset {ds.name}, sample {sample}]")
        return cache

    def _open(self):
        m = self.meta
        s = self.size
        f = lambda name: os.path.join(self.folder, name)
        mm = lambda name, shape: (np.memmap(f(name), dtype=np.uint8, mode="r", shape=shape)
                                  if int(np.prod(shape)) else np.zeros(shape, np.uint8))
        self._maps = {"images": mm("images.u8", (m["n_images"], 3, s, s)),
                      "masks": mm("masks.u8", (m["n_masks"], s, s)),
                      "bits": mm("orig.bits", (m["orig_bytes"],)),
                      "index": np.load(f("index.npy")), "sizes": np.load(f("sizes.npy"))}
        return self._maps

    def __getstate__(self):  # DataLoader workers open their own maps
        return {**self.__dict__, "_maps": None}

    # ---- reading ---------------------------------------------------------------------------------------------
    def get(self, record: int, original: bool) -> dict:
        """uint8 image (3,S,S), uint8 mask (S,S), original (h, w) and, with ``original``, the bool mask at the
        original size.  A record that could not be read at build time raises its BadSampleError again."""
        if record in self.bad:
            raise BadSampleError(self.bad[record])
        maps = self._maps or self._open()
        i, j = self.record_slots[record]
        out = {"image": torch.from_numpy(np.array(maps["images"][i])),
               "mask": torch.from_numpy(np.array(maps["masks"][j])),
               "orig_size": tuple(int(v) for v in maps["sizes"][i])}
        if original:
            off, h, w = (int(v) for v in maps["index"][j])
            n = (h * w + 7) // 8
            bits = np.unpackbits(maps["bits"][off:off + n], count=h * w)
            out["orig_mask"] = torch.from_numpy(bits.view(np.bool_).reshape(h, w))
        return out

    def get_batch(self, records: list[int], original: bool) -> dict:
        """``get`` for several good records at once: images (B,3,S,S) and masks (B,S,S) uint8 in one copy each,
        original sizes (B,2) int64, and the list of original-size masks with ``original``."""
        maps = self._maps or self._open()
        slots = np.asarray([self.record_slots[r] for r in records], dtype=np.int64).reshape(-1, 2)
        out = {"image": torch.from_numpy(np.ascontiguousarray(maps["images"][slots[:, 0]])),
               "mask": torch.from_numpy(np.ascontiguousarray(maps["masks"][slots[:, 1]])),
               "orig_size": torch.from_numpy(np.ascontiguousarray(maps["sizes"][slots[:, 0]]))}
        if original:
            masks = []
            for j in slots[:, 1]:
                off, h, w = (int(v) for v in maps["index"][j])
                bits = np.unpackbits(maps["bits"][off:off + (h * w + 7) // 8], count=h * w)
                masks.append(torch.from_numpy(bits.view(np.bool_).reshape(h, w)))
            out["orig_mask"] = masks
        return out


def loader_workers(ds, requested: int) -> int:
    """DataLoader workers for ``ds``: 0 when every part reads the data cache without augmentation (a batch is then
    one memory copy in this process, faster than any worker can ship it through its queue; measured in bench.py),
    else ``requested``."""
    parts = getattr(ds, "datasets", [ds])
    cached = all(getattr(p, "cache", None) is not None and not p.transform.augment for p in parts)
    return 0 if cached else requested


def enable_cache(ds, cache_dir: str):
    """Turn the data cache on for a ManifestDataset or every part of a ConcatDataset of them; returns ``ds``.
    Parts that read their files their own way (``ImageTargetsDataset``) stay on the per-sample path."""
    parts = getattr(ds, "datasets", [ds])
    for part in parts:
        if hasattr(part, "use_cache"):
            part.use_cache(cache_dir)
    return ds


# ----------------------------------------------------------------------------------------------------- internals

def _slots(records: list[dict]):
    """Unique images and masks (by name) and each record's (image slot, mask slot)."""
    img_idx: dict[str, int] = {}
    mask_idx: dict[str, int] = {}
    slots = []
    for r in records:
        i = img_idx.setdefault(r["img_name"], len(img_idx))
        j = mask_idx.setdefault(r["mask_name"], len(mask_idx))
        slots.append((i, j))
    return list(img_idx), list(mask_idx), slots


def _source_stats(ds, image_names, mask_names):
    return ([_stat(os.path.join(ds.image_dir, n)) for n in image_names],
            [_stat(os.path.join(ds.mask_dir, n)) for n in mask_names])


def _valid_meta(folder: str, expect: dict, ds, image_names, mask_names) -> dict | None:
    """The folder's meta when every trust rule holds, else None."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expect.items()):
        return None
    if meta.get("image_names") != image_names or meta.get("mask_names") != mask_names:
        return None
    for name, nbytes in meta.get("files", {}).items():
        try:
            if os.path.getsize(os.path.join(folder, name)) != nbytes:
                return None
        except OSError:
            return None
    if set(meta.get("files", {})) != set(DATA_FILES):
        return None
    img_stats, mask_stats = _source_stats(ds, image_names, mask_names)
    if meta.get("image_stats") != img_stats or meta.get("mask_stats") != mask_stats:
        return None
    return meta


def _clean_leftovers(parent: str) -> None:
    """Remove temporary folders of builds whose process is gone (killed mid-build) and replaced stale folders."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith((".tmp-", ".stale-")):
            continue
        try:
            pid = int(name.split("-")[-2])
        except (ValueError, IndexError):
            pid = -1
        if name.startswith(".stale-") or not _pid_alive(pid):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _disk_error(e: OSError, folder: str, need: int, cache_dir: str) -> CacheError:
    try:
        free = shutil.disk_usage(cache_dir).free
    except OSError:
        free = -1
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"no space left on device while building the data cache {folder} (it needs about "
                          f"{need / 2**20:.0f} MB, {max(free, 0) / 2**20:.0f} MB free); nothing was kept. Free "
                          f"some space, put the cache on another disk with --cache-dir, or train with --no-cache")
    return CacheError(f"cannot write the data cache {folder}: {e.strerror or e}; pass --cache-dir with a "
                      f"writable folder, or train with --no-cache")


def _build(ds, folder, parent, expect, image_names, mask_names, slots) -> dict:
    s = expect["size"]
    n_img, n_mask = len(image_names), len(mask_names)
    img_bytes, mask_bytes = 3 * s * s, s * s
    # the estimate for the free-space check; original masks take about h*w/8 bytes each, guessed at 1 MPixel
    need = n_img * img_bytes + n_mask * (mask_bytes + 2**17)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise _disk_error(e, folder, need, parent) from None
    _clean_leftovers(parent)
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        free = None
    if free is not None and free < need:
        raise _disk_error(OSError(errno.ENOSPC, "no space left on device"), folder, need, parent)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(folder)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    t0 = time.time()
    print(f"data cache: building {folder} ({n_img} images at {s} px)", file=sys.stderr, flush=True)
    first_sample = {}
    for k, smp in enumerate(ds.samples):
        first_sample.setdefault(smp.record, k)
    try:
        os.makedirs(tmp)
        meta = _write(ds, tmp, expect, image_names, mask_names, slots, first_sample)
    except BadSampleError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(e, folder, need, parent) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, folder, parent, expect, ds, image_names, mask_names)
    print(f"data cache: built in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    # another process may have published an equivalent cache first: describe the folder that is there
    return _valid_meta(folder, expect, ds, image_names, mask_names) or meta


def _write(ds, tmp, expect, image_names, mask_names, slots, first_sample) -> dict:
    s = expect["size"]
    img_bytes, mask_bytes = 3 * s * s, s * s
    n_img, n_mask = len(image_names), len(mask_names)
    img_done, mask_done = np.zeros(n_img, bool), np.zeros(n_mask, bool)
    index = np.zeros((n_mask, 3), np.int64)
    sizes = np.zeros((n_img, 2), np.int64)
    bad: dict[int, str] = {}
    img_stats, mask_stats = _source_stats(ds, image_names, mask_names)  # before reading: a later edit invalidates

    def decode(rec: int):
        try:
            raw = ds.load(first_sample[rec])
            img, mask = ds.transform.resize(raw["pil"], raw["mask"])
            return rec, raw, img, mask, None
        except BadSampleError as e:
            return rec, None, None, None, e

    todo = []
    seen = set()
    for rec, (i, j) in enumerate(slots):
        if rec in first_sample and (i, j) not in seen:
            seen.add((i, j))
            todo.append(rec)
    f_img = open(os.path.join(tmp, "images.u8"), "wb")
    f_mask = open(os.path.join(tmp, "masks.u8"), "wb")
    f_bits = open(os.path.join(tmp, "orig.bits"), "wb")
    offset = 0
    try:
        f_img.truncate(n_img * img_bytes)
        f_mask.truncate(n_mask * mask_bytes)
        threads = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:
            for rec, raw, img, mask, err in pool.map(decode, todo):
                if err is not None:
                    if ds.on_bad_sample != "skip":
                        raise BadSampleError(f"{err} [dataset {ds.name}, sample {first_sample[rec]}]") from None
                    bad[rec] = str(err)
                    continue
                i, j = slots[rec]
                if not img_done[i]:
                    f_img.seek(i * img_bytes)
                    f_img.write(img.numpy().tobytes())
                    sizes[i] = raw["orig_size"]
                    img_done[i] = True
                if not mask_done[j]:
                    f_mask.seek(j * mask_bytes)
                    f_mask.write(mask.numpy().tobytes())
                    packed = np.packbits(np.ascontiguousarray(raw["mask"], dtype=bool).reshape(-1))
                    f_bits.write(packed.tobytes())
                    h, w = raw["mask"].shape
                    index[j] = (offset, h, w)
                    offset += packed.size
                    mask_done[j] = True
        # records that share a slot with a bad record but were not decoded themselves are bad too
        for rec, (i, j) in enumerate(slots):
            if rec not in bad and not (img_done[i] and mask_done[j]):
                src = next((b for b, sl in enumerate(slots) if sl == (i, j) and b in bad), None)
                bad[rec] = bad[src] if src is not None else f"record {rec} of {ds.manifest_path} was not cached"
        for f in (f_img, f_mask, f_bits):
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in (f_img, f_mask, f_bits):
            f.close()
    np.save(os.path.join(tmp, "index.npy"), index)
    np.save(os.path.join(tmp, "sizes.npy"), sizes)
    files = {name: os.path.getsize(os.path.join(tmp, name)) for name in DATA_FILES}
    meta = dict(expect, orig_bytes=offset, image_names=image_names, mask_names=mask_names,
                image_stats=img_stats, mask_stats=mask_stats, bad_records={str(k): v for k, v in sorted(bad.items())},
                files=files, built=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:  # last: it makes the folder valid
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    return meta


def _publish(tmp, folder, parent, expect, ds, image_names, mask_names) -> None:
    """Rename the finished build into place; an invalid folder there is moved aside first.  When another
    process published a valid cache meanwhile, ours is dropped."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if _valid_meta(folder, expect, ds, image_names, mask_names) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = os.path.join(parent, f".stale-{os.path.basename(folder)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, stale)
        except FileNotFoundError:
            pass
        os.rename(tmp, folder)
        shutil.rmtree(stale, ignore_errors=True)
    _fsync_dir(parent)
