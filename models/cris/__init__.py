"""CRIS (CLIP-Driven Referring Image Segmentation, Wang et al., CVPR 2022) with a CLIP ResNet-50 backbone.

Architecture (facts checked against ``../shared/reference/cris``; the golden test matches the
original implementation's output and intermediates within 2e-4):

* ``backbone`` (:mod:`.backbone`): an open_clip ``CLIP`` (ModifiedResNet image tower + text transformer,
  QuickGELU).  Its attention pool is replaced by :class:`DenseAttentionPool`, which keeps CLIP's
  q/k/v/c_proj weights and positional table but attends densely over all ``h*w`` tokens (no class token;
  the 7x7 table, row 0 dropped, is resized bicubically to ``h x w``) and adds a residual 1x1 conv-BN
  branch ``connect`` (new in CRIS).  Taps: C3 = layer2, C4 = layer3, C5 = dense attnpool(layer4).
  Text: word features = ``ln_final`` output of the whole sequence (not projected); sentence
  state = EOT feature (position ``argmax(ids)``) ``@ text_projection``.  The causal mask has the
  size of the input sequence (the original builds it with ``word_len``: same thing).
* ``neck`` (:mod:`.decoder`): :class:`FPNNeck`, text enters only through ``C5 * state``; output stride 16.
* ``decoder``: :class:`VisionLanguageDecoder`, pre-norm layers with self-attention on visual
  tokens, cross-attention to the words (key padding mask), FFN; fixed sine positional encodings.
* ``proj``: :class:`Projector`, upsamples x4 and convolves each sample with its own 3x3 kernel
  predicted from the sentence state.  Output: raw logits ``(B, 1, S/4, S/4)``.
  ``model(..., return_intermediates=True)`` also returns the dict of named intermediate tensors.

Naming: the modules are named exactly as in the original code, so ``model.state_dict()`` *is* the
original CRIS naming (662 keys for RN50); checkpoint I/O (:mod:`.checkpoint`) only adds/strips the
``module.`` prefix that the original DDP training wrote.  ``python -m models.cris RUN OUT.pth`` exports a
CRIS trained with train.py to that format.  See ``docs/cris.md``.

Text: CLIP BPE, ``[SOT] ids [EOT]`` padded with id 0 to ``word_len`` (default 77, CLIP's full
context: the longest medical prompts, P9 with a general description and a location, need about
35 tokens, and radiology prompts listing several findings more; the original used 17/22 for
RefCOCO).  The decoder ignores pad positions: from ``attention_mask`` when given, otherwise
``input_ids == pad_id`` (0), so results do not depend on ``word_len``.
"""
from __future__ import annotations

import os

from .backbone import DenseAttentionPool, ParamGroup, build_clip_backbone
from .checkpoint import (
    OPENAI_META_KEYS,
    OPENAI_RN50_HF_REPO,
    OPENAI_RN50_URL,
    export_original_state_dict,
    load_clip_weights,
    load_cris_checkpoint,
    load_original_state_dict,
    original_key_order,
    read_clip_state_dict,
    resolve_openai_rn50,
    save_cris_checkpoint,
)
from .config import DEFAULT_WORD_LEN, PAD_ID, PRESETS, CRISConfig
from .decoder import DecoderLayer, FPNNeck, Projector, VisionLanguageDecoder
from .model import CRIS

__all__ = ["CRIS", "DEFAULT_WORD_LEN", "OPENAI_META_KEYS", "OPENAI_RN50_HF_REPO", "OPENAI_RN50_URL", "PAD_ID",
           "PRESETS", "CRISConfig", "DecoderLayer", "DenseAttentionPool", "FPNNeck", "ParamGroup", "Projector",
           "VisionLanguageDecoder", "build_clip_backbone", "build_cris", "export_original_state_dict",
           "load_clip_weights", "load_cris_checkpoint", "load_original_state_dict", "original_key_order",
           "read_clip_state_dict", "resolve_openai_rn50", "save_cris_checkpoint"]


def build_cris(weights: str | None = None, size: str = "base", word_len: int | None = None,
               dropout: float | None = None, cris_checkpoint: str | None = None, input_size: int | None = None,
               config: dict | None = None, **cfg) -> CRIS:
    """Build CRIS (registered as ``cris``).

    size: ``base`` (CLIP RN50, 416 px, ~146.85M parameters) or ``tiny`` (128 px, CPU demo).
    weights: None (random init), ``"openai"`` (CLIP RN50 through open_clip: cache, else download), or a
        path to OpenAI's ``RN50.pt`` / an open_clip RN50 state dict.  Loads the CLIP part only.
    cris_checkpoint: a checkpoint of the original CRIS code (or saved by :func:`save_cris_checkpoint`);
        loaded after ``weights``.
    word_len: text length in tokens (default 77, fits the paper's P0-P9 prompts).
    config: a full config dict (flat, or the golden file's ``{"clip": ..., "cris": ...}``); replaces ``size``.
    cfg: overrides of single :class:`CRISConfig` fields (e.g. ``num_layers=2``).
    """
    if config is not None:
        base = CRISConfig.from_dict(config).to_dict()
    elif size in PRESETS:
        base = PRESETS[size].to_dict()
    else:
        raise ValueError(f"unknown CRIS size '{size}'; use 'base' or 'tiny'")
    unknown = set(cfg) - set(base)
    if unknown:
        raise TypeError(f"unknown CRIS options: {', '.join(sorted(unknown))} (known: {', '.join(sorted(base))})")
    base.update(cfg)
    if dropout is not None:  # else the preset's or the config's
        base["dropout"] = float(dropout)
    if word_len is not None:
        base["word_len"] = int(word_len)
    if input_size is not None:
        base["input_size"] = int(input_size)
    if weights:  # resolve before the (slow) build so a missing file fails fast
        weights = resolve_openai_rn50() if weights == "openai" else weights
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"CLIP weights file '{weights}' does not exist. Pass the OpenAI RN50.pt "
                                    f"(--weights /path/RN50.pt), --weights openai, or --weights none.")
    model = CRIS(CRISConfig(**base))
    if weights:
        load_clip_weights(model, weights)
    if cris_checkpoint:
        load_cris_checkpoint(model, cris_checkpoint)
    return model
