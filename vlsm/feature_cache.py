"""The frozen-encoder feature cache (``train.py --cache-features``): encoders run once, the decoder trains.

With both encoders frozen and no augmentation, what the decoder reads never changes: the image features of
each image and the text features of each distinct prompt.  :class:`FeatureCache` computes them once (images:
one pass over the training and validation sets before the first epoch; prompts: every prompt the manifests can
give, and any other the first time it is seen), keeps them on the device when they fit (else in host memory),
and :meth:`FeatureCache.wrap` turns a loader's batches into batches that carry ``features``;
``util.runtime.forward_batch`` sends those to :class:`DecoderNet`, which runs the decoder only.

What is cached is the model's business: the cache calls ``model.encode_image``, ``model.encode_text`` and
``model.decode`` (``models/base.py``; CLIPSeg and BiomedCLIPSeg(-D): the tapped vision activations and the
text embedding; CRIS: C3-C5, and the word features, sentence state and padding mask), so no model code is
copied here.  The text-free CNNs are refused (:func:`check_usable` says why).

The cache never consumes the random streams of the run (Python's ``random`` is restored after the pass over
the training set), so a run with the cache draws the same prompts and batches as one without it.
"""
from __future__ import annotations

import random

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset

from datasets import collate
from datasets.medical import image_position
from models.base import SegModel, feature_tensors, map_features
from util.runtime import autocast, prepare_images, tokenize_cached, unwrap


class FeatureCacheError(ValueError):
    """--cache-features cannot give the same training as recomputing the encoders (a ValueError: one line)."""


def has_feature_path(model) -> bool:
    """Whether ``model`` reads text and implements the three parts the cache calls (``encode_image``,
    ``encode_text``, ``decode``)."""
    m = unwrap(model)
    if not isinstance(m, SegModel) or not getattr(m, "uses_text", True):
        return False
    return all(getattr(type(m), part) is not getattr(SegModel, part)
               for part in ("encode_image", "encode_text", "decode"))


def _stochastic_in_train_mode(model) -> bool:
    """Whether a frozen encoder holds a module whose output differs in train mode (dropout p > 0, BatchNorm)."""
    from torch import nn
    frozen = model.frozen_modules() if hasattr(model, "frozen_modules") else []
    return any((isinstance(m, nn.Dropout) and m.p > 0) or isinstance(m, nn.modules.batchnorm._BatchNorm)
               for f in frozen for m in f.modules())


def check_usable(model, augment: bool) -> None:
    """Refuse (FeatureCacheError) when cached encoder outputs would differ from recomputed ones, or when the
    model is a text-free CNN: its frozen ResNet could be cached, but its multi-scale maps (the input image
    included) take about 24 MB per image at 352 px, and ``--multiclass`` picks each record's channel from a batch
    field that the cached batches do not carry."""
    name = getattr(model, "name", type(model).__name__)
    if not has_feature_path(model):
        raise FeatureCacheError(f"--cache-features: model '{name}' has no frozen-encoder feature path (CLIPSeg, "
                                f"BiomedCLIPSeg(-D) and CRIS have one); train without --cache-features")
    frozen = getattr(model, "frozen", {})
    peft = getattr(model, "peft", None)
    changed = [part for part in ("image", "text") if not frozen.get(part)]
    if peft and changed:  # a method that works inside an encoder changes its output every step
        raise FeatureCacheError(f"--cache-features: --peft {peft['method']} works inside the {' and '.join(changed)} "
                                f"encoder, so its outputs change every step and cannot be cached; methods that leave "
                                f"both encoders' outputs unchanged can (e.g. --peft adapter-shallow --adapter-in cond)")
    if not (frozen.get("image") and frozen.get("text")):
        raise FeatureCacheError("--cache-features needs both encoders frozen (--freeze-image-encoder "
                                "--freeze-text-encoder): an encoder that trains changes its outputs every step, so "
                                "cached features would be wrong")
    if getattr(model, "frozen_mode", "eval") == "train" and _stochastic_in_train_mode(model):
        raise FeatureCacheError("--cache-features needs --frozen-mode eval here: these frozen encoders hold dropout "
                                "or BatchNorm, which in train mode give other outputs every step, so cached features "
                                "would be wrong")
    if augment:
        raise FeatureCacheError("--cache-features cannot be combined with --augment: augmentation changes every "
                                "image every epoch, so features cached once would be wrong; drop one of the two")


# -------------------------------------------------------------------------------------------------------- cache

def _parts(ds):
    """(global offset, ManifestDataset) for a dataset or a ConcatDataset of them."""
    if isinstance(ds, ConcatDataset):
        starts = [0] + list(ds.cumulative_sizes[:-1])
        return list(zip(starts, ds.datasets))
    return [(0, ds)]


def _candidate_texts(ds) -> list[str]:
    """Every prompt text the manifests can give for the dataset's prompt choice."""
    out: dict[str, None] = {}
    for _, part in _parts(ds):
        for r in part.records:
            keys = sorted(r["prompts"]) if part.prompt == "random" else [part.prompt]
            for k in keys:
                v = r["prompts"].get(k)
                for t in ([v] if isinstance(v, str) else v or []):
                    out[t] = None
    return list(out)


def _layout(features):
    """The nesting of ``features`` (tuples/lists) with each tensor replaced by an empty one: how to rebuild
    the features from their flat list of tensors."""
    return map_features(lambda _: torch.empty(0), features)


class DecoderNet(nn.Module):
    """The decoder of ``model`` fed from cached features: ``forward(img0=..., img1=..., txt0=...)`` -> logits.

    The flat tensors are put back in the nesting ``encode_image`` / ``encode_text`` gave them (the layouts the
    cache records) and go to ``model.decode``.  The model is a child, so ``train()``/``eval()`` and the
    parameters are the model's (frozen parts stay in eval mode, as ``SegModel.train`` keeps them)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.image_layout = None
        self.text_layout = None

    def forward(self, **feats):
        image = iter([feats[f"img{i}"] for i in range(sum(k.startswith("img") for k in feats))])
        text = iter([feats[f"txt{i}"] for i in range(sum(k.startswith("txt") for k in feats))])
        return self.model.decode(map_features(lambda _: next(image), self.image_layout),
                                 map_features(lambda _: next(text), self.text_layout))


class FeatureCache:
    """Encoder outputs per image (key: dataset name, image name) and per prompt text."""

    def __init__(self, model, device: torch.device, amp: bool = False, batch_size: int = 16,
                 store_device: torch.device | None = None):
        self.model = unwrap(model)
        self.device, self.amp, self.batch_size = device, amp, batch_size
        self.store_device = store_device
        self.image_slot: dict[tuple[str, str], int] = {}
        self.image_feats: list[torch.Tensor] | None = None
        self.text_slot: dict[str, int] = {}
        self.text_rows: list[list[torch.Tensor]] = []
        self.text_feats: list[torch.Tensor] | None = None
        self.decoder = DecoderNet(self.model)

    # ---- building ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_images(self, x) -> list[torch.Tensor]:
        with autocast(self.device, self.amp):
            feats = self.model.encode_image(prepare_images(x, self.model, self.device))
        self.decoder.image_layout = _layout(feats)
        return [f.detach() for f in feature_tensors(feats)]

    @torch.no_grad()
    def _encode_texts(self, texts) -> list[torch.Tensor]:
        with autocast(self.device, self.amp):
            tokens = tokenize_cached(self.model, texts, self.device)
            feats = self.model.encode_text(tokens["input_ids"], tokens.get("attention_mask"))
        self.decoder.text_layout = _layout(feats)
        return [f.detach() for f in feature_tensors(feats)]

    def add_dataset(self, ds, workers: int = 0) -> int:
        """Encode every image of ``ds`` not cached yet, and every prompt its manifests can give; returns the
        number of images encoded."""
        todo = []
        for off, part in _parts(ds):
            seen = set()
            for k, smp in enumerate(part.samples):
                rec = part.records[smp.record]
                key = (part.name, rec["img_name"], image_position(rec))  # a frame or slice is its own image
                if key not in self.image_slot and key not in seen:
                    seen.add(key)
                    todo.append(off + k)
        py_state = random.getstate()  # the pass draws prompts (train=True); the run's stream must not move
        was_training = self.model.training
        self.model.eval()
        new_keys, chunks = [], []
        try:
            with torch.inference_mode(False):
                loader = DataLoader(Subset(ds, todo), batch_size=self.batch_size, shuffle=False, num_workers=workers,
                                    collate_fn=collate, generator=torch.Generator().manual_seed(0))
                for batch in loader:
                    if "image" not in batch:
                        continue
                    feats = self._encode_images(batch["image"])
                    if self.store_device is None:
                        self.store_device = self._pick_store(feats, len(batch["image"]), len(todo))
                    chunks.append([f.to(self.store_device) for f in feats])
                    new_keys += list(zip(batch["dataset"], batch["name"]))
        finally:
            random.setstate(py_state)
            self.model.train(was_training)
        if chunks:
            new = [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]
            base = len(self.image_slot)
            self.image_feats = new if self.image_feats is None else [torch.cat([a, b]) for a, b in
                                                                     zip(self.image_feats, new)]
            for i, key in enumerate(new_keys):
                self.image_slot[key] = base + i
        self.add_texts(_candidate_texts(ds))
        return len(new_keys)

    def _pick_store(self, feats, n_batch: int, n_total: int) -> torch.device:
        """The compute device when the features of all images fit in half of its free memory, else the host."""
        if self.device.type != "cuda":
            return self.device
        need = sum(f.numel() * f.element_size() for f in feats) / max(n_batch, 1) * n_total
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need < 0.5 * free else torch.device("cpu")

    def _first_store(self, f: torch.Tensor) -> torch.device:
        if self.store_device is None:
            self.store_device = self.device
        return self.store_device

    def add_texts(self, texts) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.text_slot]
        if not missing:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(False):  # also when first seen inside evaluation
                for k in range(0, len(missing), self.batch_size):
                    chunk = missing[k:k + self.batch_size]
                    feats = self._encode_texts(chunk)
                    for i, t in enumerate(chunk):
                        self.text_slot[t] = len(self.text_rows)
                        self.text_rows.append([f[i].to(self._first_store(f)) for f in feats])
        finally:
            self.model.train(was_training)
        self.text_feats = None

    # ---- reading ---------------------------------------------------------------------------------------------
    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        """The cached features of a collated batch (``img0..``, ``txt0..``) for :class:`DecoderNet`."""
        keys = list(zip(batch["dataset"], batch["name"]))
        missing = [k for k in keys if k not in self.image_slot]
        if missing:
            raise KeyError(f"--cache-features: image {missing[0][1]} of {missing[0][0]} has no cached features")
        self.add_texts(batch["text"])
        if self.text_feats is None:
            with torch.inference_mode(False):
                self.text_feats = [torch.stack([row[i] for row in self.text_rows])
                                   for i in range(len(self.text_rows[0]))]
        dev = self.store_device
        img_idx = torch.tensor([self.image_slot[k] for k in keys], device=dev)
        txt_idx = torch.tensor([self.text_slot[t] for t in batch["text"]], device=dev)
        out = {f"img{i}": f.index_select(0, img_idx) for i, f in enumerate(self.image_feats)}
        out.update({f"txt{i}": f.index_select(0, txt_idx) for i, f in enumerate(self.text_feats)})
        return out

    def nbytes(self) -> int:
        feats = (self.image_feats or []) + (self.text_feats or [])
        return sum(f.numel() * f.element_size() for f in feats)

    def wrap(self, loader) -> "FeatureBatches":
        return FeatureBatches(self, loader)


class FeatureBatches:
    """A loader whose batches also carry the cached ``features``."""

    def __init__(self, cache: FeatureCache, loader):
        self.cache, self.loader = cache, loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if "image" in batch:
                batch = {**batch, "features": self.cache.features(batch)}
            yield batch

