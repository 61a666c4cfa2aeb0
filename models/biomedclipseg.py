"""BiomedCLIPSeg and BiomedCLIPSeg-D: BiomedCLIP encoders with a CLIPSeg decoder.

Architecture
------------
* Image encoder: BiomedCLIP's ViT-B/16 (a timm ``vit_base_patch16_224`` trunk plus a
  768 -> 512 linear projection).  Module names follow open_clip's ``TimmModel``
  (``visual.trunk.*``, ``visual.head.proj.weight``) so an open_clip BiomedCLIP
  checkpoint loads directly.
* Text encoder: PubMedBERT (BERT-base, uncased, vocab 30522) with open_clip's
  ``cls_last_hidden_state_pooler`` (the [CLS] token of the last layer) and its
  ``mlp`` projection 768 -> 640 -> 512 (``text.transformer.*``, ``text.proj.{0,2}``).
  Prompts are tokenized with a HF BERT WordPiece tokenizer, context length 256.
* Decoder: transformers' ``CLIPSegDecoder`` (FiLM on the projected text embedding,
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
``i + 1`` and so tapped blocks 5, 8 and 11.)  Blocks after ``max(extract_layers)``,
the final norm and the image projection do not influence the output; they are kept
so the BiomedCLIP checkpoint loads unchanged, and the forward pass stops early.

Weights
-------
``weights=None``: random initialisation of everything, no download (the base
architecture's config is inline).  ``weights`` = ``hf-hub:<repo>`` / ``<repo>`` (looked
up in the local Hugging Face cache; downloaded only when online and
``HF_HUB_OFFLINE`` is not set) or a local folder holding ``open_clip_config.json`` and
``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` (plus ``vocab.txt``
for the tokenizer): loads the BiomedCLIP encoders; the decoder stays random
(biomedclipseg) or is copied from a pretrained CLIPSeg (biomedclipseg_d).
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .base import CLIP_MEAN, CLIP_STD, SegModel
from .hub import hub_file
from .text import TruncationWarner

logger = logging.getLogger(__name__)

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CLIPSEG_HUB_ID = "CIDAS/clipseg-rd64-refined"

# Inline copies of the BiomedCLIP architecture (open_clip_config.json + PubMedBERT config.json),
# so the base model builds offline.  "vision" = timm VisionTransformer kwargs.
SIZES = {
    "base": dict(
        vision=dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
        text=dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
        embed_dim=512, context_length=256, input_size=224, extract_layers=(3, 6, 9),
        decoder=dict(reduce_dim=64, n_heads=4, intermediate_size=2048)),
    "tiny": dict(
        vision=dict(img_size=128, patch_size=16, embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0),
        text=dict(vocab_size=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=256, type_vocab_size=2, pad_token_id=0),
        embed_dim=32, context_length=256, input_size=128, extract_layers=(1, 2, 3),
        decoder=dict(reduce_dim=16, n_heads=2, intermediate_size=32)),
}

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------
def make_tiny_bert_vocab(folder: str | os.PathLike, words=()) -> str:
    """Write a small WordPiece ``vocab.txt`` into ``folder`` and return its path.

    Contains the BERT special tokens ([PAD] = id 0, as in PubMedBERT), the lower-cased
    ``words``, every ASCII letter/digit/punctuation character and their ``##`` continuation
    pieces, so any ASCII prompt tokenizes without [UNK]."""
    import string
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = list(BERT_SPECIAL_TOKENS)
    for tok in [w.lower() for w in words] + list(chars) + ["##" + c for c in chars]:
        if tok and tok not in vocab:
            vocab.append(tok)
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return str(path)


def _find_vocab(path: str | os.PathLike) -> str:
    p = Path(path)
    if p.is_file():
        return str(p)
    if (p / "vocab.txt").is_file():
        return str(p / "vocab.txt")
    raise FileNotFoundError(f"no BERT vocabulary at '{path}': give a vocab.txt file or a folder containing one "
                            f"(e.g. the BiomedCLIP snapshot folder, or make one with make_tiny_bert_vocab)")


class BertPromptTokenizer:
    """HF BERT WordPiece tokenizer -> ``{"input_ids", "attention_mask"}`` LongTensors.

    Sequences are ``[CLS] tokens [SEP]`` padded with [PAD] to the longest prompt in the
    batch (the attention mask marks real tokens; the [CLS]-pooled text embedding does not
    depend on padding).  Prompts longer than ``context_length`` are cut to
    ``[CLS] first tokens [SEP]`` and counted by a ``TruncationWarner`` (one warning)."""

    def __init__(self, vocab_file: str, context_length: int = 256, lowercase: bool = True):
        from tokenizers import BertWordPieceTokenizer  # the Rust WordPiece behind transformers' BertTokenizerFast
        self.vocab_file = str(vocab_file)
        self.context_length = int(context_length)
        self._tok = BertWordPieceTokenizer(self.vocab_file, lowercase=lowercase)
        self.vocab_size = self._tok.get_vocab_size()
        ids = {t: self._tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")}
        if None in ids.values():
            raise ValueError(f"vocabulary {vocab_file} lacks BERT special tokens: {[t for t, i in ids.items() if i is None]}")
        self.pad_id, self.sep_id = ids["[PAD]"], ids["[SEP]"]
        self.warner = TruncationWarner("PubMedBERT")

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        seqs = [e.ids for e in self._tok.encode_batch(list(texts))]  # [CLS] ... [SEP], untruncated
        L = self.context_length
        n_cut, example = 0, ""
        for i, s in enumerate(seqs):
            if len(s) > L:
                n_cut += 1
                example = example or texts[i]
                seqs[i] = s[: L - 1] + [self.sep_id]
        self.warner.record(n_cut, L, example)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class MissingVocabTokenizer:
    """Stands in when a model is built without a vocabulary; fails clearly when used."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, texts):
        raise RuntimeError(f"BiomedCLIP tokenizer unavailable: {self.reason}. Pass tokenizer_path=<vocab.txt or "
                           f"folder with vocab.txt> (the PubMedBERT vocab from the BiomedCLIP hub snapshot), or "
                           f"build with weights=<BiomedCLIP folder or hub id> whose snapshot contains vocab.txt.")


# ----------------------------------------------------------------------------------------------
# Encoders (state-dict layout of open_clip's BiomedCLIP CustomTextCLIP)
# ----------------------------------------------------------------------------------------------
class BiomedCLIPVision(nn.Module):
    """timm ViT trunk + linear projection; ``tapped_hidden_states`` returns the tapped block outputs."""

    def __init__(self, vision_cfg: dict, embed_dim: int):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer
        self.trunk = VisionTransformer(num_classes=0, dynamic_img_size=True, **vision_cfg)
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.0),
                                              proj=nn.Linear(self.trunk.embed_dim, embed_dim, bias=False)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings entering block 0 (the HF ``hidden_states[0]``): [B, 1 + N, D]."""
        t = self.trunk
        x = t.patch_embed(x)
        x = t._pos_embed(x)
        x = t.patch_drop(x)
        return t.norm_pre(x)

    def tapped_hidden_states(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of ``trunk.blocks[i]`` for each 0-based ``i`` in ``layers`` (ascending), [B, 1 + N, D] each."""
        x = self.embed(x)
        taps = []
        for i, block in enumerate(self.trunk.blocks[: max(layers) + 1]):
            x = block(x)
            if i in layers:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the CLIP image embedding (unused by the decoder)
        return self.head(self.trunk(x))


class BiomedCLIPText(nn.Module):
    """PubMedBERT + [CLS] pooling of the last hidden state + MLP projection (open_clip ``HFTextEncoder``)."""

    def __init__(self, text_cfg: dict, embed_dim: int):
        super().__init__()
        from transformers import BertConfig, BertModel
        self.config = BertConfig(**text_cfg)
        self.transformer = BertModel(self.config, add_pooling_layer=False)
        d = self.config.hidden_size
        hidden = (d + embed_dim) // 2
        self.proj = nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU(), nn.Linear(hidden, embed_dim, bias=False))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return self.proj(out.last_hidden_state[:, 0])


# ----------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------
def make_decoder_config(vision_hidden: int, patch_size: int, projection_dim: int, extract_layers,
                        reduce_dim: int = 64, n_heads: int = 4, intermediate_size: int = 2048,
                        refined: bool = True, conditional_layer: int = 0):
    """A ``CLIPSegConfig`` whose decoder dimensions match the given encoders."""
    from transformers import CLIPSegConfig
    config = CLIPSegConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": vision_hidden, "patch_size": patch_size, "num_hidden_layers": 1,
                       "num_attention_heads": n_heads, "intermediate_size": intermediate_size},
        projection_dim=projection_dim, extract_layers=list(extract_layers), reduce_dim=reduce_dim,
        decoder_num_attention_heads=n_heads, decoder_intermediate_size=intermediate_size,
        conditional_layer=conditional_layer, use_complex_transposed_convolution=refined)
    config._attn_implementation = "sdpa"  # the decoder is used standalone, outside from_pretrained's dispatch
    return config


def make_decoder(config) -> nn.Module:
    """A randomly initialised ``CLIPSegDecoder`` with PyTorch's default Linear/Conv initialisation
    (see ``models.clipseg.reset_decoder_init`` for why)."""
    from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoder
    from .clipseg import reset_decoder_init
    return reset_decoder_init(CLIPSegDecoder(config))


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
class BiomedCLIPSeg(SegModel):
    """BiomedCLIP image/text encoders + CLIPSeg decoder.  See the module docstring for conventions."""

    image_mean = CLIP_MEAN
    image_std = CLIP_STD

    def __init__(self, visual: BiomedCLIPVision, text: BiomedCLIPText, decoder: nn.Module,
                 extract_layers: tuple[int, ...], tokenizer, input_size: int):
        super().__init__()
        depth = len(visual.trunk.blocks)
        layers = tuple(int(i) for i in extract_layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= depth:
            raise ValueError(f"extract_layers={extract_layers}: need distinct ascending 0-based block indices "
                             f"in [0, {depth - 1}] (the image encoder has {depth} blocks)")
        self.visual = visual
        self.text = text
        self.decoder = decoder
        self.extract_layers = layers
        self.tokenizer = tokenizer
        self.input_size = int(input_size)
        self.decoder_init_report: dict | None = None

    def image_encoder_modules(self) -> list[nn.Module]:
        return [self.visual]

    def text_encoder_modules(self) -> list[nn.Module]:
        return [self.text]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids is None:
            raise ValueError("BiomedCLIPSeg needs tokenized prompts (input_ids); use model.tokenize(texts)")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts for {pixel_values.shape[0]} images")
        activations = self.visual.tapped_hidden_states(pixel_values, self.extract_layers)
        conditional = self.text(input_ids, attention_mask)
        logits = self.decoder(activations, conditional).logits  # [B, H, W]
        return logits.unsqueeze(1)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
BIOMEDCLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve_biomedclip_folder(weights: str) -> Path:
    """A folder with ``open_clip_config.json`` + weights, from a local path or a (cached) hub id."""
    p = Path(weights).expanduser()
    if p.is_dir():
        if not (p / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"BiomedCLIP folder '{p}' has no open_clip_config.json (expected a snapshot of "
                                    f"hf.co/{BIOMEDCLIP_HUB_ID})")
        return p
    if p.exists():
        raise ValueError(f"BiomedCLIP weights '{weights}' is a file; give the folder holding open_clip_config.json "
                         f"and the weights, or the hub id hf-hub:{BIOMEDCLIP_HUB_ID}")
    repo = weights[len("hf-hub:"):] if weights.startswith("hf-hub:") else weights
    hint = (f"On a machine with internet run `huggingface-cli download {repo}` (or "
            f"open_clip.create_model('hf-hub:{repo}')) and copy the Hugging Face cache here, or pass the "
            f"downloaded folder (open_clip_config.json, open_clip_pytorch_model.bin, vocab.txt) as --weights PATH.")
    cfg = hub_file(repo, "open_clip_config.json", "BiomedCLIP weights", hint)
    folder = Path(cfg).parent
    if not any((folder / f).is_file() for f in BIOMEDCLIP_FILES):
        hub_file(repo, "open_clip_pytorch_model.bin", "BiomedCLIP weights", hint)
    for extra in ("vocab.txt",):
        if not (folder / extra).is_file():
            try:
                hub_file(repo, extra, "BiomedCLIP tokenizer", hint)
            except FileNotFoundError:
                pass
    return folder


def read_open_clip_config(folder: Path, size: str = "base") -> dict:
    """The size config (``SIZES[size]``) updated from ``folder/open_clip_config.json``.

    The architecture is fixed by ``size`` (BiomedCLIP's for "base"); the file may change the image
    size and text context length, and must not name another vision tower or text projection."""
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    sc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SIZES[size].items()}
    vcfg, tcfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if size == "base" and vcfg.get("timm_model_name", "vit_base_patch16_224") != "vit_base_patch16_224":
        raise ValueError(f"{folder}/open_clip_config.json: vision tower {vcfg['timm_model_name']!r} is not "
                         f"supported (only BiomedCLIP's vit_base_patch16_224)")
    if tcfg.get("hf_proj_type", "mlp") != "mlp":
        raise ValueError(f"{folder}/open_clip_config.json: text projection {tcfg['hf_proj_type']!r} unsupported")
    if model_cfg.get("embed_dim", sc["embed_dim"]) != sc["embed_dim"]:
        raise ValueError(f"{folder}/open_clip_config.json: embed_dim {model_cfg['embed_dim']} does not match the "
                         f"{size} architecture ({sc['embed_dim']})")
    sc["vision"]["img_size"] = vcfg.get("image_size", sc["vision"]["img_size"])
    sc["context_length"] = tcfg.get("context_length", sc["context_length"])
    return sc


def save_biomedclip_encoders(model: BiomedCLIPSeg, folder: str | os.PathLike) -> Path:
    """Write ``model``'s encoders as an open_clip-style BiomedCLIP folder (config, weights, vocab.txt)
    that ``weights=folder`` loads back; used by the tests and to export fine-tuned encoders."""
    import shutil
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sc = {"embed_dim": model.visual.head.proj.out_features,
          "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_pool": "", "timm_proj": "linear",
                         "image_size": model.visual.trunk.patch_embed.img_size[0]},
          "text_cfg": {"hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                       "context_length": getattr(model.tokenizer, "context_length", 256)}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": sc}, indent=2))
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    state.update({f"text.{k}": v for k, v in model.text.state_dict().items()})
    state["logit_scale"] = torch.tensor(4.6052)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    vocab = getattr(model.tokenizer, "vocab_file", None)
    if vocab and Path(vocab).resolve() != (folder / "vocab.txt").resolve():
        shutil.copy(vocab, folder / "vocab.txt")
    return folder


def load_biomedclip_weights(model: BiomedCLIPSeg, folder: Path) -> None:
    """Load an open_clip BiomedCLIP checkpoint into ``model.visual`` / ``model.text`` (strict, explained)."""
    path = next((folder / f for f in BIOMEDCLIP_FILES if (folder / f).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no BiomedCLIP weights in '{folder}': expected one of {', '.join(BIOMEDCLIP_FILES)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    ours = {k: v for k, v in state.items() if k.startswith(("visual.", "text."))
            and not k.endswith(("position_ids", "text.transformer.pooler.dense.weight",
                                "text.transformer.pooler.dense.bias"))}
    ignored = sorted(set(state) - set(ours))
    encoders = nn.ModuleDict({"visual": model.visual, "text": model.text})
    missing, unexpected = encoders.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"BiomedCLIP checkpoint {path} does not match the architecture: "
                           f"missing {missing[:8]}, unexpected {list(unexpected)[:8]}")
    logger.info("loaded BiomedCLIP encoders from %s (%d tensors; ignored: %s)", path, len(ours), ignored)


# Words the default tiny vocabulary knows whole (anything else is spelled with character pieces).
TINY_WORDS = ("circle square triangle star round boxy pointed spiky red green blue yellow purple pink small medium "
              "large one two three located in the of image top bottom left right center which is a shape with "
              "polyp tumor lesion").split()


def default_tiny_vocab() -> str:
    """A deterministic small WordPiece vocabulary for size='tiny' (written once to the temp folder)."""
    import tempfile
    return make_tiny_bert_vocab(Path(tempfile.gettempdir()) / "medvlsm_tiny_bert_vocab", TINY_WORDS)


def _make_tokenizer(tokenizer_path, folder: Path | None, context_length: int, size: str):
    if tokenizer_path is None and folder is None and size == "tiny":
        tokenizer_path = default_tiny_vocab()
    if tokenizer_path is not None:
        return BertPromptTokenizer(_find_vocab(tokenizer_path), context_length)
    if folder is not None and (folder / "vocab.txt").is_file():
        return BertPromptTokenizer(str(folder / "vocab.txt"), context_length)
    return MissingVocabTokenizer(f"no vocabulary given for the {size} BiomedCLIP text encoder"
                                 + (f" and '{folder}' has no vocab.txt" if folder is not None else ""))


def _build(weights, size, input_size, extract_layers, tokenizer_path, decoder_kw: dict, cfg: dict):
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    if cfg:
        raise TypeError(f"unknown BiomedCLIPSeg options: {sorted(cfg)}")
    folder = None
    if weights is not None:
        folder = resolve_biomedclip_folder(str(weights))
        sc = read_open_clip_config(folder, size)
    else:
        sc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SIZES[size].items()}
    tokenizer = _make_tokenizer(tokenizer_path, folder, sc["context_length"], size)
    text_cfg = dict(sc["text"])
    if text_cfg["vocab_size"] is None:  # tiny: the vocabulary decides
        if isinstance(tokenizer, MissingVocabTokenizer):
            raise ValueError("size='tiny' BiomedCLIPSeg needs tokenizer_path=<vocab.txt> (make one with "
                             "models.biomedclipseg.make_tiny_bert_vocab(folder, words))")
        text_cfg["vocab_size"] = tokenizer.vocab_size
    layers = tuple(extract_layers) if extract_layers is not None else sc["extract_layers"]
    visual = BiomedCLIPVision(sc["vision"], sc["embed_dim"])
    text = BiomedCLIPText(text_cfg, sc["embed_dim"])
    dec = dict(sc["decoder"], **{k: v for k, v in decoder_kw.items() if v is not None})
    dec_config = make_decoder_config(sc["vision"]["embed_dim"], sc["vision"]["patch_size"], sc["embed_dim"],
                                     layers, **dec)
    model = BiomedCLIPSeg(visual, text, make_decoder(dec_config), layers, tokenizer,
                          input_size or sc["input_size"])
    model.decoder_config = dec_config
    if folder is not None:
        load_biomedclip_weights(model, folder)
    # checkpoints rebuild the skeleton without the weights folder: keep its vocabulary and sizes
    model.extra_build_args = {"input_size": model.input_size, "extract_layers": list(layers)}
    if getattr(tokenizer, "vocab_file", None):
        model.extra_build_args["tokenizer_path"] = tokenizer.vocab_file
    return model


def build_biomedclipseg(weights: str | None = None, size: str = "base", input_size: int | None = None,
                        extract_layers=None, reduce_dim: int | None = None, tokenizer_path: str | None = None,
                        n_heads: int | None = None, refined: bool = True, **cfg) -> BiomedCLIPSeg:
    """BiomedCLIPSeg: BiomedCLIP encoders (``weights``) + randomly initialised CLIPSeg decoder.

    extract_layers: 0-based block indices (default (3, 6, 9) base, (1, 2, 3) tiny); see module docstring.
    reduce_dim: decoder width (default 64 base, 16 tiny).  refined: CLIPSeg "refined" upsampling head.
    tokenizer_path: vocab.txt (or a folder with one); required for size='tiny'.
    """
    return _build(weights, size, input_size, extract_layers, tokenizer_path,
                  dict(reduce_dim=reduce_dim, n_heads=n_heads, refined=refined), cfg)


def load_pretrained_clipseg(source: str):
    """The pretrained CLIPSeg whose decoder seeds biomedclipseg_d (folder or hub id; clear error offline)."""
    from .clipseg import load_pretrained_clipseg as load
    return load(str(Path(source).expanduser()) if Path(source).expanduser().exists() else source,
                what="pretrained CLIPSeg decoder", how_to_pass="clipseg_weights=FOLDER")


def copy_decoder_weights(target: nn.Module, source: nn.Module) -> dict[str, list[str]]:
    """Copy every same-name, same-shape tensor of ``source`` into ``target``; return what happened."""
    src, dst = source.state_dict(), target.state_dict()
    report = {"copied": [], "shape_mismatch": [], "missing_in_source": [], "unused_in_source": []}
    with torch.no_grad():
        for k, v in dst.items():
            if k not in src:
                report["missing_in_source"].append(k)
            elif src[k].shape != v.shape:
                report["shape_mismatch"].append(f"{k}: ours {tuple(v.shape)} vs pretrained {tuple(src[k].shape)}")
            else:
                v.copy_(src[k].to(v.dtype))
                report["copied"].append(k)
    report["unused_in_source"] = sorted(set(src) - set(dst))
    return report


def build_biomedclipseg_d(weights: str | None = None, size: str = "base", clipseg_weights: str | None = "auto",
                          input_size: int | None = None, extract_layers=None, tokenizer_path: str | None = None,
                          **cfg) -> BiomedCLIPSeg:
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
        return build_biomedclipseg(weights, size, input_size, extract_layers, tokenizer_path=tokenizer_path, **cfg)
    pretrained = load_pretrained_clipseg(str(clipseg_weights))
    pc = pretrained.config
    dec_kw = dict(reduce_dim=pc.reduce_dim, n_heads=pc.decoder_num_attention_heads,
                  intermediate_size=pc.decoder_intermediate_size,
                  refined=pc.use_complex_transposed_convolution, conditional_layer=pc.conditional_layer)
    for key in ("reduce_dim", "n_heads", "refined"):
        if key in cfg:
            dec_kw[key] = cfg.pop(key)
    model = _build(weights, size, input_size, extract_layers, tokenizer_path, dec_kw, cfg)
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
