"""Prompt tuning as TuneVLSeg (Adhikari et al., ACCV 2024; naamiinepal/tunevlseg) does it for CLIPSeg and CRIS.

``coop`` (CoOp, Zhou et al. 2022; ``src/models/core_models/coop/context_learner/coop_context_learner.py``):
``n_ctx`` learned context vectors inserted after the start token of every prompt's token embeddings, before the
position embeddings are added (lines 136-181: ``[BOS, ctx, tokens..., last]``, cut to the text encoder's length
keeping the last position); the attention mask gets ones (CRIS's padding mask zeros) for them (lines 82-114); the
sentence feature is read at the end-of-text position shifted by ``n_ctx`` (``coop_clipseg.py`` 285-289,
``coop_cris.py`` 173-179).  Initialised from the token embeddings of ``ctx_init`` ("a photo of a", TuneVLSeg's
``configs/model/coop/*.yaml``) when it has exactly ``n_ctx`` tokens, else N(0, 0.02) (``vector_std``).
Shallow (``prompt_depth: 1``, TuneVLSeg's default).  BiomedCLIPSeg gets the same after [CLS] (PubMedBERT pools
[CLS], which does not move).

``vpt`` (VPT, Jia et al. 2022; ``context_learner/vpt_context_learner.py`` and ``vpt_clipseg.py``):
``vpt_tokens`` learned tokens appended after the patch embeddings, before the pre-transformer LayerNorm
(``vpt_clipseg.py`` 175-181, "concat before the layernorm"); with ``vpt_deep`` the tokens
at the input of every later layer up to the last tapped one are replaced by that layer's own learned tokens
(``vpt_clipseg.py`` 120-124, ``base_visual_learner.py`` 18-23; later layers do not reach the decoder).  The
decoder runs on the tapped activations with the prompt tokens and drops them with the CLS token before the
upsampling (``vpt_clipseg.py`` 287-291), done here by a hook on its last layer.  N(0, 0.02) initialisation.

Not reproduced: TuneVLSeg's configs also train an extra last decoder layer (``use_new_last_layer``); here the
decoder stays frozen unless ``train_decoder=True``.  MaPLe is not implemented.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .core import (
    PeftMethod,
    add_output_hook,
    clipseg_decoder,
    first_tensor,
    last_tapped_layer,
    model_family,
    refusal,
    replace_output,
    vision_blocks,
)

CTX_STD = 0.02  # TuneVLSeg's vector_std


def keep_within(x: torch.Tensor, max_len: int) -> torch.Tensor:
    """``x`` (B, L, ...) cut to ``max_len`` positions keeping the last one (coop_context_learner.py:150-160)."""
    if x.shape[1] <= max_len:
        return x
    return torch.cat([x[:, : max_len - 1], x[:, -1:]], dim=1)


def insert_after_first(x: torch.Tensor, inserted: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[x[:, :1], inserted, x[:, 1:]]`` along the sequence, then :func:`keep_within`; ``inserted`` has no batch
    dimension and is broadcast."""
    inserted = inserted.to(dtype=x.dtype, device=x.device).expand(x.shape[0], *inserted.shape)
    return keep_within(torch.cat([x[:, :1], inserted, x[:, 1:]], dim=1), max_len)


def token_embedding(model) -> nn.Embedding:
    family = model_family(model)
    if family == "clipseg":
        return model.hf.clip.text_model.embeddings.token_embedding
    if family == "biomedclipseg":
        return model.text.transformer.embeddings.word_embeddings
    return model.backbone.token_embedding


# ---- CoOp ------------------------------------------------------------------------------------------------------------
class TextContext(PeftMethod):
    """CoOp's context vectors ``ctx`` (n_ctx, text width) and the text encoder pass that inserts them."""

    encodes_text = True

    def __init__(self, family: str, ctx: torch.Tensor):
        super().__init__(touches_text=True)
        self.family = family
        self.ctx = nn.Parameter(ctx)

    def encode_text(self, model, input_ids, attention_mask=None, *args, **kwargs):
        if self.family == "clipseg":
            return clipseg_text_with_context(model, input_ids, attention_mask, self.ctx)
        if self.family == "biomedclipseg":
            return biomedclip_text_with_context(model, input_ids, attention_mask, self.ctx)
        return cris_text_with_context(model, input_ids, attention_mask, self.ctx, *args, **kwargs)


def _eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Where transformers' CLIP text model pools: the first EOS, or the highest id for legacy configs (id 2)."""
    if eos_token_id == 2:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


def clipseg_text_with_context(model, input_ids, attention_mask, ctx: torch.Tensor) -> torch.Tensor:
    """CLIPSeg's conditional embedding with ``ctx`` after the start token (transformers' ``CLIPSegTextModel``
    forward with ``inputs_embeds``; with an empty ``ctx`` it is ``model.encode_text`` exactly)."""
    from transformers.masking_utils import create_causal_mask
    tm = model.hf.clip.text_model
    n, max_len = ctx.shape[0], tm.config.max_position_embeddings
    with torch.set_grad_enabled(torch.is_grad_enabled() and not model.frozen["text"]):
        embeds = insert_after_first(tm.embeddings.token_embedding(input_ids), ctx, max_len)
        if attention_mask is not None:
            attention_mask = insert_after_first(attention_mask, attention_mask.new_ones(n), max_len)
        hidden = tm.embeddings(inputs_embeds=embeds)
        mask = create_causal_mask(config=tm.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  past_key_values=None)
        last = tm.final_layer_norm(tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
                                   .last_hidden_state)
        pos = (_eos_positions(input_ids, tm.eos_token_id) + n).clamp(max=embeds.shape[1] - 1)
        pooled = last[torch.arange(last.shape[0], device=last.device), pos]
        return model.hf.clip.text_projection(pooled)


def biomedclip_text_with_context(model, input_ids, attention_mask, ctx: torch.Tensor) -> torch.Tensor:
    """BiomedCLIPSeg's conditional embedding with ``ctx`` after [CLS] (PubMedBERT run on ``inputs_embeds``)."""
    text = model.text
    bert = text.transformer
    n, max_len = ctx.shape[0], bert.config.max_position_embeddings
    if attention_mask is None:
        attention_mask = (input_ids != text.config.pad_token_id).long()
    embeds = insert_after_first(bert.embeddings.word_embeddings(input_ids), ctx, max_len)
    attention_mask = insert_after_first(attention_mask, attention_mask.new_ones(n), max_len)
    out = bert(inputs_embeds=embeds, attention_mask=attention_mask)
    return text.proj(out.last_hidden_state[:, 0])


def cris_text_with_context(model, input_ids, attention_mask, ctx: torch.Tensor, intermediates: dict | None = None):
    """CRIS's (word features, sentence state, padding mask) with ``ctx`` after the start token
    (``coop_cris.py`` 147-183; with an empty ``ctx`` it is ``CRIS.encode_text`` exactly)."""
    keep = intermediates if intermediates is not None else {}
    bb = model.backbone
    n, max_len = ctx.shape[0], model.tokenizer.context_length
    with torch.set_grad_enabled(torch.is_grad_enabled() and not model.frozen["text"]):
        x = insert_after_first(bb.token_embedding(input_ids), ctx, max_len)
        L = x.shape[1]
        x = x + bb.positional_embedding[:L]
        causal = torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        words = bb.ln_final(bb.transformer(x, attn_mask=causal))
        pos = (input_ids.argmax(dim=-1) + n).clamp(max=L - 1)  # EOT has the highest id
        state = words[torch.arange(words.shape[0], device=words.device), pos] @ bb.text_projection
    pad = model.padding_mask(input_ids, attention_mask)
    pad = insert_after_first(pad, pad.new_zeros(n), max_len)
    keep.update({"text.word": words, "text.state": state, "pad_mask": pad})
    return words, state, pad


def context_from_words(model, ctx_init: str, n_ctx: int) -> torch.Tensor | None:
    """The token embeddings of ``ctx_init`` (without start/end tokens), or None if it is not ``n_ctx`` tokens."""
    tokens = model.tokenize([ctx_init])
    n_real = int(tokens["attention_mask"][0].sum())
    ids = tokens["input_ids"][0, 1: n_real - 1]
    if len(ids) != n_ctx:
        return None
    emb = token_embedding(model)
    with torch.no_grad():
        return emb(ids.to(emb.weight.device)).detach().clone()


def build_coop(model, opts: dict) -> TextContext:
    """CoOp context vectors; records in ``opts`` whether they were initialised from ``ctx_init``."""
    family = model_family(model)
    n_ctx = int(opts["n_ctx"])
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
    emb = token_embedding(model)
    ctx = None
    if opts["ctx_init"]:
        ctx = context_from_words(model, opts["ctx_init"], n_ctx)
        if ctx is None and opts.get("_ctx_init_given"):
            n = int(model.tokenize([opts["ctx_init"]])["attention_mask"][0].sum()) - 2
            raise ValueError(f"ctx_init {opts['ctx_init']!r} is {n} tokens for {model.name}'s tokenizer but n_ctx is "
                             f"{n_ctx}; give n_ctx={n}, or ctx_init='' for random context vectors")
    if ctx is None:
        opts["ctx_init"] = None  # the default phrase does not fit n_ctx: random, and the record says so
        ctx = torch.empty(n_ctx, emb.embedding_dim, device=emb.weight.device, dtype=emb.weight.dtype)
        nn.init.normal_(ctx, std=CTX_STD)
    return TextContext(family, ctx)


# ---- VPT -------------------------------------------------------------------------------------------------------------
class VisualPrompts(PeftMethod):
    """VPT's prompt tokens ``prompts`` (depth, n, width): row 0 appended after the patch embeddings, row k
    replacing them at the input of block k (deep), removed in the decoder before the upsampling."""

    def __init__(self, prompts: torch.Tensor):
        super().__init__(touches_image=True)
        self.prompts = nn.Parameter(prompts)

    @property
    def n_tokens(self) -> int:
        return self.prompts.shape[1]

    def _batch(self, k: int, like: torch.Tensor) -> torch.Tensor:
        return self.prompts[k].to(like.dtype).expand(like.shape[0], -1, -1)

    def append(self, module, args, output):
        """Hook on the token embeddings: [CLS, patches] -> [CLS, patches, prompts]."""
        x = first_tensor(output)
        return replace_output(output, torch.cat([x, self._batch(0, x)], dim=1))

    def replace(self, k: int, module, args, output):
        """Hook on block k - 1: the prompt tokens entering block k are its own (deep VPT)."""
        x = first_tensor(output)
        return replace_output(output, torch.cat([x[:, : -self.n_tokens], self._batch(k, x)], dim=1))

    def strip(self, module, args, output):
        """Hook on the decoder's last layer: drop the prompt tokens before the decoder reshapes the patches."""
        x = first_tensor(output)
        return replace_output(output, x[:, : -self.n_tokens])

    def attach(self, model) -> None:
        family = model_family(model)
        embeddings = (model.hf.clip.vision_model.embeddings if family == "clipseg"
                      else model.visual.trunk.patch_drop)  # timm: after cls token + positions, before norm_pre
        add_output_hook(embeddings, self.append)
        blocks = vision_blocks(model)
        for k in range(1, self.prompts.shape[0]):
            add_output_hook(blocks[k - 1], functools.partial(self.replace, k))
        add_output_hook(clipseg_decoder(model).layers[-1], self.strip)


def build_vpt(model, opts: dict) -> VisualPrompts:
    if model_family(model) == "cris":
        raise refusal(model, "vpt", "its image encoder is a ResNet, with no token sequence to add prompt tokens to")
    n = int(opts["vpt_tokens"])
    if n < 1:
        raise ValueError(f"vpt_tokens must be at least 1, got {n}")
    depth = last_tapped_layer(model) + 1 if opts["vpt_deep"] else 1
    width = (model.hf.config.vision_config.hidden_size if model_family(model) == "clipseg"
             else model.visual.trunk.embed_dim)
    ref = next(model.parameters())
    prompts = torch.empty(depth, n, width, device=ref.device, dtype=ref.dtype)
    nn.init.normal_(prompts, std=CTX_STD)
    method = VisualPrompts(prompts)
    method.attach(model)
    return method
