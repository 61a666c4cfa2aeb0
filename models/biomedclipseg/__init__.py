"""BiomedCLIPSeg and BiomedCLIPSeg-D: BiomedCLIP encoders with a CLIPSeg decoder.

Architecture
------------
* Image encoder (:mod:`.encoders`): BiomedCLIP's ViT-B/16 (a timm ``vit_base_patch16_224`` trunk plus a
  768 -> 512 linear projection).  Module names follow open_clip's ``TimmModel``
  (``visual.trunk.*``, ``visual.head.proj.weight``) so an open_clip BiomedCLIP
  checkpoint loads directly.
* Text encoder: PubMedBERT (BERT-base, uncased, vocab 30522) with open_clip's
  ``cls_last_hidden_state_pooler`` (the [CLS] token of the last layer) and its
  ``mlp`` projection 768 -> 640 -> 512 (``text.transformer.*``, ``text.proj.{0,2}``).
  Prompts are tokenized with a HF BERT WordPiece tokenizer (:mod:`.tokenizer`), context length 256.
* Decoder (:mod:`.decoder`): transformers' ``CLIPSegDecoder`` (FiLM on the projected text embedding,
  768 -> ``reduce_dim`` linear reductions, one post-norm transformer layer per
  tapped layer, transposed-convolution upsampling by the patch size).  With
  ``refined=True`` (default, as in ``CIDAS/clipseg-rd64-refined``) the upsampling is
  conv3x3 + two transposed convolutions.

Layer-indexing convention (the paper's released code was off by one here)
--------------------------------------------------------------------------
``extract_layers`` are **0-based transformer block indices**: layer ``i`` is the
output of ``visual.trunk.blocks[i]``.  This is exactly CLIPSeg's convention: the
original CLIPSeg taps ``resblocks[i]`` for ``i in (3, 6, 9)`` and transformers'
``CLIPSegForImageSegmentation`` takes ``hidden_states[i + 1]`` where
``hidden_states[0]`` is the embedding output.  So the default ``(3, 6, 9)`` feeds the
outputs of the 4th, 7th and 10th blocks (counting from 1) to the decoder, the same
blocks whose activations the pretrained CLIPSeg decoder was trained on.  (The
paper's BiomedCLIPSeg-D code indexed a list *without* the embedding output with
``i + 1`` and so tapped blocks 5, 8 and 11; ``taps="code"`` taps those, for ``--preset medvlsm-code``.)
Blocks after ``max(extract_layers)``, the final norm and the image projection do not influence the output; they are kept
so the BiomedCLIP checkpoint loads unchanged, and the forward pass stops early.

Weights (:mod:`.weights`)
-------------------------
``weights=None``: random initialisation of everything, no download (the base
architecture's config is inline).  ``weights`` = ``hf-hub:<repo>`` / ``<repo>`` (looked
up in the local Hugging Face cache; downloaded only when online and
``HF_HUB_OFFLINE`` is not set) or a local folder holding ``open_clip_config.json`` and
``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` (plus ``vocab.txt``
for the tokenizer): loads the BiomedCLIP encoders; the decoder stays random
(biomedclipseg) or is copied from a pretrained CLIPSeg (biomedclipseg_d).
"""
from __future__ import annotations

import logging

from ..registry import CLIPSEG_HUB_ID
from .decoder import copy_decoder_weights, load_pretrained_clipseg, make_decoder, make_decoder_config
from .encoders import BiomedCLIPText, BiomedCLIPVision
from .model import BiomedCLIPSeg
from .tokenizer import (
    BERT_SPECIAL_TOKENS,
    TINY_WORDS,
    BertPromptTokenizer,
    MissingVocabTokenizer,
    default_tiny_vocab,
    find_vocab,
    make_tiny_bert_vocab,
    make_tokenizer,
)
from .weights import (
    BIOMEDCLIP_FILES,
    load_biomedclip_weights,
    read_open_clip_config,
    resolve_biomedclip_folder,
    save_biomedclip_encoders,
)

__all__ = ["BERT_SPECIAL_TOKENS", "BIOMEDCLIP_FILES", "SIZES", "TINY_WORDS", "BertPromptTokenizer", "BiomedCLIPSeg",
           "BiomedCLIPText", "BiomedCLIPVision", "MissingVocabTokenizer", "build_biomedclipseg",
           "build_biomedclipseg_d", "copy_decoder_weights", "default_tiny_vocab", "find_vocab",
           "load_biomedclip_weights", "load_pretrained_clipseg", "make_decoder", "make_decoder_config",
           "make_tiny_bert_vocab", "make_tokenizer", "read_open_clip_config", "resolve_biomedclip_folder",
           "save_biomedclip_encoders"]

logger = logging.getLogger(__name__)

# Inline copies of the BiomedCLIP architecture (open_clip_config.json + PubMedBERT config.json),
# so the base model builds offline.  "vision" = timm VisionTransformer kwargs.
SIZES = {
    "base": {
        "vision": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
                   "mlp_ratio": 4.0},
        "text": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0},
        "embed_dim": 512, "context_length": 256, "input_size": 224, "extract_layers": (3, 6, 9),
        "decoder": {"reduce_dim": 64, "n_heads": 4, "intermediate_size": 2048}},
    "tiny": {
        "vision": {"img_size": 128, "patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0},
        "text": {"vocab_size": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 256, "type_vocab_size": 2, "pad_token_id": 0},
        "embed_dim": 32, "context_length": 256, "input_size": 128, "extract_layers": (1, 2, 3),
        "decoder": {"reduce_dim": 16, "n_heads": 2, "intermediate_size": 32}},
}


#: where the decoder taps the image encoder: "clipseg" (the default, CLIPSeg's blocks) or "code" (the released
#: code's, each one block later: ``hidden_states[i + 1]`` of a list without the embedding output)
TAPS = ("clipseg", "code")


def tap_layers(default, taps: str, depth: int) -> tuple[int, ...]:
    """The 0-based blocks tapped under ``taps``: ``default`` (clipseg), or each one block later (code: (4, 7, 10)
    of BiomedCLIP's 12).  Where a shifted tap would leave the encoder (only the 4-block tiny test config, whose
    taps end on its last block) the default taps stay, so the decoder keeps its layers."""
    if taps not in TAPS:
        raise ValueError(f"taps must be one of {', '.join(TAPS)}, got {taps!r}")
    shifted = tuple(i + 1 for i in default)
    return tuple(default) if taps == "clipseg" or shifted[-1] >= depth else shifted


def _build(weights, size, input_size, extract_layers, tokenizer_path, decoder_kw: dict, cfg: dict,
           taps: str = "clipseg"):
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    if cfg:
        raise TypeError(f"unknown BiomedCLIPSeg options: {sorted(cfg)}")
    folder = None
    if weights is not None:
        folder = resolve_biomedclip_folder(str(weights))
        sc = read_open_clip_config(folder, SIZES[size], size)
    else:
        sc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SIZES[size].items()}
    tokenizer = make_tokenizer(tokenizer_path, folder, sc["context_length"], size)
    text_cfg = dict(sc["text"])
    if text_cfg["vocab_size"] is None:  # tiny: the vocabulary decides
        if isinstance(tokenizer, MissingVocabTokenizer):
            raise ValueError("size='tiny' BiomedCLIPSeg needs tokenizer_path=<vocab.txt> (make one with "
                             "models.biomedclipseg.make_tiny_bert_vocab(folder, words))")
        text_cfg["vocab_size"] = tokenizer.vocab_size
    layers = tuple(extract_layers) if extract_layers is not None else \
        tap_layers(sc["extract_layers"], taps, sc["vision"]["depth"])
    visual = BiomedCLIPVision(sc["vision"], sc["embed_dim"])
    text = BiomedCLIPText(text_cfg, sc["embed_dim"])
    dec = dict(sc["decoder"], **{k: v for k, v in decoder_kw.items() if v is not None})
    dec_config = make_decoder_config(sc["vision"]["embed_dim"], sc["vision"]["patch_size"], sc["embed_dim"],
                                     layers, **dec)
    model = BiomedCLIPSeg(visual, text, make_decoder(dec_config), layers, tokenizer,
                          input_size or sc["input_size"])
    if folder is not None:
        load_biomedclip_weights(model, folder)
    # checkpoints rebuild the skeleton without the weights folder: keep its vocabulary and sizes
    model.extra_build_args = {"input_size": model.input_size, "extract_layers": list(layers)}
    if getattr(tokenizer, "vocab_file", None):
        model.extra_build_args["tokenizer_path"] = tokenizer.vocab_file
    return model


def build_biomedclipseg(weights: str | None = None, size: str = "base", input_size: int | None = None,
                        extract_layers=None, reduce_dim: int | None = None, tokenizer_path: str | None = None,
                        n_heads: int | None = None, refined: bool = True, taps: str = "clipseg",
                        **cfg) -> BiomedCLIPSeg:
    """BiomedCLIPSeg: BiomedCLIP encoders (``weights``) + randomly initialised CLIPSeg decoder.

    extract_layers: 0-based block indices (default (3, 6, 9) base, (1, 2, 3) tiny); see the package docstring.
    taps: "clipseg" (those defaults) or "code" (the released code's blocks, one later; :func:`tap_layers`).
    reduce_dim: decoder width (default 64 base, 16 tiny).  refined: CLIPSeg "refined" upsampling head.
    tokenizer_path: vocab.txt (or a folder with one); required for size='tiny'.
    """
    return _build(weights, size, input_size, extract_layers, tokenizer_path,
                  {"reduce_dim": reduce_dim, "n_heads": n_heads, "refined": refined}, cfg, taps)


def build_biomedclipseg_d(weights: str | None = None, size: str = "base", clipseg_weights: str | None = "auto",
                          input_size: int | None = None, extract_layers=None, tokenizer_path: str | None = None,
                          taps: str = "clipseg", **cfg) -> BiomedCLIPSeg:
    """BiomedCLIPSeg-D: BiomedCLIP encoders + decoder initialised from a pretrained CLIPSeg.

    clipseg_weights: hub id or folder of a ``CLIPSegForImageSegmentation``; ``"auto"`` (default) means
    ``CIDAS/clipseg-rd64-refined`` when ``weights`` is given and a random decoder when ``weights`` is None
    (so rebuilding a skeleton for a checkpoint never needs a download); None = random decoder.
    The decoder's hyper-parameters (reduce_dim, heads, FFN size, refined head) follow the pretrained
    config; tensors that cannot be copied are listed in the log and in ``model.decoder_init_report``.
    """
    if clipseg_weights == "auto":
        clipseg_weights = CLIPSEG_HUB_ID if weights is not None else None
    if clipseg_weights is None:
        logger.info("biomedclipseg_d: no CLIPSeg weights given; decoder initialised at random")
        return build_biomedclipseg(weights, size, input_size, extract_layers, tokenizer_path=tokenizer_path, taps=taps,
                                   **cfg)
    pretrained = load_pretrained_clipseg(str(clipseg_weights))
    pc = pretrained.config
    dec_kw = {"reduce_dim": pc.reduce_dim, "n_heads": pc.decoder_num_attention_heads,
              "intermediate_size": pc.decoder_intermediate_size,
              "refined": pc.use_complex_transposed_convolution, "conditional_layer": pc.conditional_layer}
    for key in ("reduce_dim", "n_heads", "refined"):
        if key in cfg:
            dec_kw[key] = cfg.pop(key)
    model = _build(weights, size, input_size, extract_layers, tokenizer_path, dec_kw, cfg, taps)
    if tuple(pc.extract_layers) != model.extract_layers:
        logger.warning("biomedclipseg_d: pretrained CLIPSeg tapped layers %s, this model taps %s",
                       tuple(pc.extract_layers), model.extract_layers)
    report = copy_decoder_weights(model.decoder, pretrained.decoder)
    model.decoder_init_report = report
    logger.info("biomedclipseg_d: copied %d/%d decoder tensors from %s: %s", len(report["copied"]),
                len(model.decoder.state_dict()), clipseg_weights, ", ".join(report["copied"]))
    not_copied = report["shape_mismatch"] + report["missing_in_source"]
    if not_copied:
        logger.warning("biomedclipseg_d: %d decoder tensors left at random init: %s", len(not_copied),
                       "; ".join(not_copied))
    if report["unused_in_source"]:
        logger.info("biomedclipseg_d: pretrained decoder tensors not used: %s", ", ".join(report["unused_in_source"]))
    del pretrained
    return model
