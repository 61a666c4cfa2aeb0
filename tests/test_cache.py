"""The data cache (datasets/cache.py): the same tensors as the per-sample path, and never trusted when stale,
half-written, from another version, or when the disk filled up while it was built."""
import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import ManifestDataset, SegTransform, collate
from datasets.cache import CACHE_VERSION, CacheError, DataCache, enable_cache
from datasets.io import BadSampleError
from util.runtime import prepare_images, tokenize_cached

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Stats:  # what prepare_images reads from a model
    image_mean, image_std = MEAN, STD


def _dataset(root, split="train", augment=False, train=None, original=None, size=48, **kw):
    data_root, prompts_root = root
    train = split == "train" if train is None else train
    original = split != "train" if original is None else original
    folder = os.path.join(data_root, "synthetic")
    return ManifestDataset(os.path.join(prompts_root, "synthetic", f"{split}.json"),
                           os.path.join(folder, "images"), os.path.join(folder, "masks"),
                           prompt="p3", transform=SegTransform(size, MEAN, STD, augment=augment), train=train,
                           return_original=original, name="synthetic", **kw)


@pytest.fixture()
def tiny_set(tmp_path):
    """A few synthetic images (own copy: these tests modify files)."""
    from datasets.synthetic import generate
    generate(str(tmp_path / "data"), str(tmp_path / "pj"), seed=2, counts={"train": 6, "val": 4, "test": 2})
    return str(tmp_path / "data"), str(tmp_path / "pj")


def _folders(cache_dir):
    out = []
    for dirpath, dirs, files in os.walk(cache_dir):
        out += [os.path.join(dirpath, d) for d in dirs]
    return out


@pytest.mark.parametrize("split", ["train", "val"])
def test_cached_items_equal_the_per_sample_path(small_synthetic, tmp_path, split):
    plain = _dataset(small_synthetic, split)
    cached = _dataset(small_synthetic, split, cache_dir=str(tmp_path / "cache"))
    for i in range(0, len(plain), 7):
        a, b = plain[i], cached[i]
        assert b["image"].dtype == torch.uint8 and set(a) == set(b)
        assert torch.equal(prepare_images(b["image"][None], Stats, torch.device("cpu"))[0], a["image"])
        assert b["mask"].dtype == torch.uint8 and torch.equal(a["mask"], b["mask"].float())
        assert torch.equal(a["orig_size"], b["orig_size"])
        assert a["text"] == b["text"] and a["name"] == b["name"] and a["mask_name"] == b["mask_name"]
        if split == "val":
            assert b["orig_mask"].dtype == torch.bool and torch.equal(a["orig_mask"], b["orig_mask"])
    assert "orig_mask" in collate([cached[0], cached[1]]) or split == "train"


def test_augmentation_on_cached_tensors_draws_like_the_per_sample_path(tiny_set, tmp_path):
    import random
    plain = _dataset(tiny_set, augment=True)
    cached = _dataset(tiny_set, augment=True, cache_dir=str(tmp_path / "cache"))
    for i in range(len(plain)):
        random.seed(i)
        a = plain[i]["image"]
        random.seed(i)
        b = prepare_images(cached[i]["image"][None], Stats, torch.device("cpu"))[0]
        # the same brightness/contrast draws; the cached path rounds to uint8 (half a grey level)
        assert (a - b).abs().max().item() <= 0.51 / 255 / min(STD) + 1e-6


def test_reopening_uses_the_cache_and_changed_files_rebuild_it(tiny_set, tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    ds = _dataset(tiny_set, "val", cache_dir=cache_dir)
    folder = ds.cache.folder
    built = ds.cache.meta["built"]
    capsys.readouterr()
    again = _dataset(tiny_set, "val", cache_dir=cache_dir)
    assert again.cache.folder == folder and "building" not in capsys.readouterr().err
    # an image rewritten (other pixels, other size/mtime): rebuilt, and the new pixels are read
    rec = ds.records[0]
    path = os.path.join(tiny_set[0], "synthetic", "images", rec["img_name"])
    img = np.asarray(Image.open(path).convert("RGB")).copy()
    img[:] = 255 - img
    Image.fromarray(img).save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = _dataset(tiny_set, "val", cache_dir=cache_dir)
    assert "building" in capsys.readouterr().err
    plain = _dataset(tiny_set, "val")[0]["image"]
    assert torch.equal(prepare_images(fresh[0]["image"][None], Stats, torch.device("cpu"))[0], plain)
    # a manifest edit (another prompt) rebuilds too; another input size is another folder
    mpath = os.path.join(tiny_set[1], "synthetic", "val.json")
    recs = json.load(open(mpath))
    recs[0]["prompts"]["p3"] = "a changed prompt"
    json.dump(recs, open(mpath, "w"))
    _dataset(tiny_set, "val", cache_dir=cache_dir)
    assert "building" in capsys.readouterr().err
    other = _dataset(tiny_set, "val", size=32, cache_dir=cache_dir)
    assert other.cache.folder != folder and other[0]["image"].shape == (3, 32, 32)
    assert built and fresh.cache.meta["image_stats"] != ds.cache.meta["image_stats"]


def test_half_written_stale_and_other_version_caches_are_rebuilt(tiny_set, tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    ds = _dataset(tiny_set, "val", cache_dir=cache_dir)
    folder = ds.cache.folder
    ref = [ds[i]["image"].clone() for i in range(len(ds))]

    def reopen_rebuilds():
        capsys.readouterr()
        d = _dataset(tiny_set, "val", cache_dir=cache_dir)
        assert "building" in capsys.readouterr().err
        assert all(torch.equal(d[i]["image"], ref[i]) for i in range(len(d)))
        return d

    # killed mid-build: the data files are there, meta.json (written last) is not
    os.remove(os.path.join(folder, "meta.json"))
    reopen_rebuilds()
    # a data file cut short (disk trouble, a copy interrupted)
    with open(os.path.join(folder, "images.u8"), "r+b") as f:
        f.truncate(100)
    reopen_rebuilds()
    # a cache of another version
    meta = json.load(open(os.path.join(folder, "meta.json")))
    json.dump(dict(meta, version=CACHE_VERSION + 1), open(os.path.join(folder, "meta.json"), "w"))
    reopen_rebuilds()
    # garbage meta.json
    open(os.path.join(folder, "meta.json"), "w").write("{not json")
    reopen_rebuilds()
    # a temporary folder left by a killed build (its process is gone) is removed by the next build
    dead = os.path.join(os.path.dirname(folder), f".tmp-{os.path.basename(folder)}-999999999-deadbeef")
    shutil.copytree(folder, dead)
    os.remove(os.path.join(folder, "meta.json"))
    reopen_rebuilds()
    assert not os.path.exists(dead)
    assert [f for f in _folders(cache_dir) if os.path.basename(f).startswith(".")] == []


def test_full_disk_while_building_is_a_clear_error_and_leaves_nothing_trusted(tiny_set, tmp_path, monkeypatch):
    cache_dir = str(tmp_path / "cache")
    import datasets.cache as cache_mod
    real = cache_mod._write

    def full_disk(ds, tmp, *a, **k):
        open(os.path.join(tmp, "images.u8"), "wb").write(b"\0" * 1000)  # something written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache_mod, "_write", full_disk)
    with pytest.raises(CacheError, match=r"no space left on device.*--cache-dir.*--no-cache"):
        _dataset(tiny_set, "val", cache_dir=cache_dir)
    assert [f for f in _folders(cache_dir) if "px-" in os.path.basename(f)] == []  # no folder, no temp folder
    monkeypatch.setattr(cache_mod, "_write", real)
    ds = _dataset(tiny_set, "val", cache_dir=cache_dir)  # a later run builds a good one
    assert ds[0]["image"].dtype == torch.uint8
    # the free-space check up front
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(CacheError, match="no space left"):
        _dataset(tiny_set, "val", size=40, cache_dir=cache_dir)


def test_bad_samples_in_the_cache_follow_on_bad_sample(tiny_set, tmp_path):
    cache_dir = str(tmp_path / "cache")
    ds = _dataset(tiny_set, "val")
    bad = os.path.join(tiny_set[0], "synthetic", "images", ds.records[0]["img_name"])
    open(bad, "wb").write(b"not an image")
    with pytest.raises(BadSampleError, match=os.path.basename(bad)):
        _dataset(tiny_set, "val", cache_dir=cache_dir)
    assert [f for f in _folders(cache_dir) if "px-" in os.path.basename(f)] == []
    skipping = _dataset(tiny_set, "val", cache_dir=cache_dir, on_bad_sample="skip")
    assert "skipped" in skipping[0] and "image" in skipping[len(skipping) - 1]
    with pytest.raises(BadSampleError, match=os.path.basename(bad)):  # a cache built while skipping
        _dataset(tiny_set, "val", cache_dir=cache_dir)


def test_workers_read_the_cache(tiny_set, tmp_path):
    from torch.utils.data import DataLoader
    ds = _dataset(tiny_set, "val", cache_dir=str(tmp_path / "cache"))
    ds[0]  # maps opened in this process are not sent to the workers
    batches = list(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate))
    assert sum(b["image"].shape[0] for b in batches) == len(ds)
    assert torch.equal(batches[0]["image"][0], ds[0]["image"])
    assert isinstance(DataCache.__getstate__(ds.cache)["_maps"], type(None))


def test_enable_cache_on_pooled_datasets(tiny_set, tmp_path):
    from torch.utils.data import ConcatDataset
    pooled = ConcatDataset([_dataset(tiny_set, "val"), _dataset(tiny_set, "test")])
    enable_cache(pooled, str(tmp_path / "cache"))
    assert all(p.cache is not None for p in pooled.datasets) and pooled[len(pooled) - 1]["image"].dtype == torch.uint8


def test_each_prompt_is_tokenized_once_and_rows_match_the_tokenizer():
    from models.base import SegModel
    from models.biomedclipseg import BertPromptTokenizer, default_tiny_vocab
    from models.text import ClipTokenizer
    # CLIP pads to a fixed length, BERT to the longest prompt of the batch
    for name, tok in (("clip", ClipTokenizer()), ("bert", BertPromptTokenizer(default_tiny_vocab()))):
        model = SegModel()
        model.tokenizer = tok
        calls = []
        real = model.tokenize
        model.tokenize = lambda texts, device=None: calls.append(list(texts)) or real(texts, device)
        texts = ["red circle", "a much longer prompt about a blue square in the corner", "red circle", ""]
        got = tokenize_cached(model, texts)
        ref = real(texts)
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref), name
        tokenize_cached(model, texts[:2])
        assert sorted(t for c in calls for t in c) == sorted(set(texts)), name  # each distinct text once


@pytest.mark.parametrize("augment", [False, True])
def test_batched_fetch_equals_collating_the_items(small_synthetic, tmp_path, augment):
    import random
    for split in ("train", "val"):
        ds = _dataset(small_synthetic, split, augment=augment and split == "train", cache_dir=str(tmp_path / "c"))
        idx = [5, 0, 17, 3]
        random.seed(1)
        a = collate([ds[i] for i in idx])
        random.seed(1)
        b = collate(ds.__getitems__(idx))
        assert list(a) == list(b)
        for k in a:
            if torch.is_tensor(a[k]):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
            elif k == "orig_mask":
                assert all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
            else:
                assert a[k] == b[k], k
