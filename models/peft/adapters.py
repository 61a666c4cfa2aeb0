"""VLSM-Adapter (Dhakal et al., MICCAI 2024; naamiinepal/vlsm-adapter, ``src/models/clipseg_adapter.py``):
bottleneck adapters in a frozen vision-language segmentation model.

* :class:`Adapter` is their module (lines 12-46): ``x + act(fc2(act(fc1(x))))`` with ReLU, PyTorch's default
  Linear initialisation and the activation applied after ``fc2`` too, exactly as written there.  It is not
  zero-initialised, so an adapted model's output differs from the base model's from the first step.
* ``adapter-shallow`` (``CLIPSegShallowAdapter``, lines 49-192): one adapter on each encoder layer output the
  decoder reads.  Vision: on each tapped activation (lines 144-150).  Text: on the text encoder's hidden state at
  the same layer indices, at the EOT token, added to the conditional embedding (lines 169-183).  Cond: one adapter
  of width 256 on the conditional embedding, before the text terms are added (lines 108-111, 164-167).  All of it
  sits between the encoders and the decoder, so both encoders stay frozen without autograd (their features can
  be cached; the text features then carry the tapped EOT states along with the conditional embedding).
* ``adapter-dense`` (``CLIPSegDenseAdapter``, lines 195-422): adapters on the attention output and on the MLP
  output, before each residual addition, in the first ``max(extract_layers)`` (= 9) layers of both encoders
  (lines 231-279, 296-316, 349-375); and the cond adapter (line 416).  Placed by forward hooks.

Beyond the source (which is CLIPSeg only), with the same rules:

* BiomedCLIPSeg(-D): the timm ViT's ``attn``/``mlp`` outputs; PubMedBERT is post-norm, so its adapters go on the
  dropout output inside ``BertSelfOutput``/``BertOutput``, right before ``LayerNorm(hidden + input)``.  Shallow text
  adapters read the [CLS] state (what BiomedCLIP pools) and, since PubMedBERT's width (768) is not the embedding's
  (512), pass through BiomedCLIP's own frozen text projection before they are added to the conditional embedding.
* CRIS: shallow adapters on C3/C4/C5 (per position, over channels), on the word features and on the sentence
  state: the encoder outputs its decoder reads.  Dense adapters in the first 9 blocks of its CLIP text tower; its
  ResNet image encoder has no attention/MLP branches, so dense ``vision`` is refused (default ``text,cond``).
"""
from __future__ import annotations

import torch
from torch import nn

from .core import (
    PeftMethod,
    add_output_hook,
    first_tensor,
    last_tapped_layer,
    model_family,
    refusal,
    replace_output,
    text_blocks,
    vision_blocks,
)

PARTS = ("vision", "text", "cond")
COND_ADAPTER_DIM = 256   # clipseg_adapter.py:110 (and :283): the cond adapter's width, whatever adapter_dim is
DENSE_LAYERS = 9         # CRIS has no extract_layers: the first 9 text blocks, VLSM-Adapter's count for CLIPSeg


class Adapter(nn.Module):
    """Houlsby-style bottleneck as VLSM-Adapter wrote it: ``x + relu(fc2(relu(fc1(x))))``, default Linear init."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(width, dim)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.fc1(x))
        h = self.activation(self.fc2(h))
        return x + h

    def on_output(self, module, args, output):
        """Forward hook: the adapter applied to a module's output (the first element of a tuple)."""
        return replace_output(output, self(first_tensor(output)))


def over_channels(adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    """An adapter on a feature map (B, C, H, W), applied to each position's C channels."""
    return adapter(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def resolve_parts(model, method: str, adapter_in, supported: tuple[str, ...]) -> list[str]:
    """``adapter_in`` (a list or a comma-separated string; None = every part the model supports) as a list in
    the order vision, text, cond; an unknown or unsupported part is refused in one line."""
    if adapter_in is None:
        return [p for p in PARTS if p in supported]
    wanted = [p.strip() for p in adapter_in.split(",")] if isinstance(adapter_in, str) else list(adapter_in)
    wanted = [p for p in wanted if p]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown or not wanted:
        raise ValueError(f"adapter_in: unknown part {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(PARTS)}")
    for p in wanted:
        if p not in supported:
            raise refusal(model, method, f"adapter_in '{p}' is not possible here ({UNSUPPORTED[method, p]}); "
                                         f"use adapter_in={','.join(supported)}")
    return [p for p in PARTS if p in wanted]


UNSUPPORTED = {("adapter-dense", "vision"): "its ResNet image encoder has no attention or MLP branch to put an "
                                            "adapter before the residual addition"}


def text_taps(model) -> list[int]:
    """The text layers whose outputs shallow text adapters read: the vision taps' indices that the text encoder
    has (clipseg_adapter.py:170-174 reads ``text_hidden_states[i + 1]`` for the same ``extract_layers``)."""
    depth = len(text_blocks(model))
    return [i for i in model.extract_layers if i < depth]


# ---- adapter-shallow -------------------------------------------------------------------------------------------------
class ShallowAdapters(PeftMethod):
    """One adapter per encoder output the decoder reads (see the module docstring); all of them in ``decode``."""

    def __init__(self, family: str, vision_dims: list[int], text_dims: list[int], cond_dim: int | None,
                 width: int, taps: list[int], project_text: bool):
        super().__init__()
        self.family = family
        self.vision = nn.ModuleList([Adapter(d, width) for d in vision_dims]) if vision_dims else None
        self.text = nn.ModuleList([Adapter(d, width) for d in text_dims]) if text_dims else None
        self.cond = Adapter(cond_dim, COND_ADAPTER_DIM) if cond_dim else None
        self.taps = list(taps)
        self.project_text = project_text
        # CLIPSeg/BiomedCLIPSeg text adapters need intermediate text states: encode_text returns them too
        self.encodes_text = self.text is not None and family != "cris"

    def encode_text(self, model, input_ids, attention_mask=None, *args, **kwargs):
        """(conditional embedding, the text states at the tapped layers (B, n_taps, width)), the encoder frozen."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not model.frozen["text"]):
            if self.family == "clipseg":
                out = model.hf.clip.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                               output_hidden_states=True, return_dict=True)
                cond = model.hf.clip.text_projection(out.pooler_output)
                pos = input_ids.argmax(dim=-1)  # EOT has the highest id (clipseg_adapter.py:176-180)
            else:
                text = model.text
                if attention_mask is None:
                    attention_mask = (input_ids != text.config.pad_token_id).long()
                out = text.transformer(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
                cond = text.proj(out.last_hidden_state[:, 0])
                pos = torch.zeros_like(rows)  # [CLS], what BiomedCLIP pools
            states = torch.stack([out.hidden_states[i + 1][rows, pos] for i in self.taps], dim=1)
        return cond, states

    def adapt_features(self, model, image_features, text_features):
        if self.family == "cris":
            c3, c4, c5 = image_features
            words, state, pad = text_features
            if self.vision is not None:
                c3, c4, c5 = (over_channels(a, f) for a, f in zip(self.vision, (c3, c4, c5)))
            if self.text is not None:
                words = self.text[0](words)
            if self.cond is not None:
                state = self.cond(state)
            return (c3, c4, c5), (words, state, pad)
        cond, states = text_features if self.encodes_text else (text_features, None)
        if self.vision is not None:
            image_features = [a(f) for a, f in zip(self.vision, image_features)]
        if self.cond is not None:
            cond = self.cond(cond)
        if self.text is not None:
            for k, adapter in enumerate(self.text):
                delta = adapter(states[:, k])
                cond = cond + (model.text.proj(delta) if self.project_text else delta)
        return image_features, cond


def build_shallow(model, opts: dict) -> ShallowAdapters:
    family = model_family(model)
    parts = resolve_parts(model, "adapter-shallow", opts["adapter_in"], PARTS)
    width = int(opts["adapter_dim"])
    vision_dims, text_dims, cond_dim, taps, project = [], [], None, [], False
    if family == "clipseg":
        cfg = model.hf.config
        vision_dims = [cfg.vision_config.hidden_size] * len(model.extract_layers)
        taps = text_taps(model)
        text_dims = [cfg.text_config.hidden_size] * len(taps)
        cond_dim = cfg.projection_dim
        if "text" in parts and cfg.text_config.hidden_size != cfg.projection_dim:
            raise refusal(model, "adapter-shallow", f"its text width ({cfg.text_config.hidden_size}) differs from "
                                                    f"the conditional embedding's ({cfg.projection_dim}), to which "
                                                    f"the text adapters are added; use adapter_in=vision,cond")
    elif family == "biomedclipseg":
        vision_dims = [model.visual.trunk.embed_dim] * len(model.extract_layers)
        taps = text_taps(model)
        text_dims = [model.text.config.hidden_size] * len(taps)
        cond_dim = model.text.proj[-1].out_features
        project = True
    elif family == "cris":
        cfg = model.config
        vision_dims = list(cfg.fpn_in)          # C3, C4, C5 channels
        text_dims = [cfg.transformer_width]     # the word features
        cond_dim = cfg.word_dim                 # the sentence state
    if "text" in parts and not text_dims:
        raise refusal(model, "adapter-shallow", "its text encoder has none of the tapped layer indices "
                                                f"{list(model.extract_layers)}; use adapter_in=vision,cond")
    method = ShallowAdapters(family, vision_dims if "vision" in parts else [], text_dims if "text" in parts else [],
                             cond_dim if "cond" in parts else None, width, taps, project)
    method.parts = parts
    return method


# ---- adapter-dense ---------------------------------------------------------------------------------------------------
class DenseAdapters(PeftMethod):
    """Adapters before each residual addition of the first layers of both encoders (forward hooks), and the cond
    adapter on the conditional embedding (CRIS: the sentence state)."""

    def __init__(self, family: str, vision_dims: list[int], text_dims: list[int], cond_dim: int | None, width: int):
        super().__init__(touches_image=bool(vision_dims), touches_text=bool(text_dims))
        self.family = family
        self.vision_attn = nn.ModuleList([Adapter(d, width) for d in vision_dims])
        self.vision_mlp = nn.ModuleList([Adapter(d, width) for d in vision_dims])
        self.text_attn = nn.ModuleList([Adapter(d, width) for d in text_dims])
        self.text_mlp = nn.ModuleList([Adapter(d, width) for d in text_dims])
        self.cond = Adapter(cond_dim, COND_ADAPTER_DIM) if cond_dim else None

    def attach(self, vision_sites: list[tuple[nn.Module, nn.Module]], text_sites: list[tuple[nn.Module, nn.Module]]):
        """Hook each adapter onto the output of its (attention, MLP) module."""
        for sites, attn_adapters, mlp_adapters in ((vision_sites, self.vision_attn, self.vision_mlp),
                                                   (text_sites, self.text_attn, self.text_mlp)):
            for (attn, mlp), a, m in zip(sites, attn_adapters, mlp_adapters):
                add_output_hook(attn, a.on_output)
                add_output_hook(mlp, m.on_output)

    def adapt_features(self, model, image_features, text_features):
        if self.cond is None:
            return image_features, text_features
        if self.family == "cris":
            words, state, pad = text_features
            return image_features, (words, self.cond(state), pad)
        return image_features, self.cond(text_features)


def dense_sites(model, part: str) -> list[tuple[nn.Module, nn.Module]]:
    """(attention output, MLP output) modules of the first layers of an encoder: the outputs that are added to
    the residual stream (clipseg_adapter.py:296-316 vision, 349-375 text)."""
    family = model_family(model)
    if part == "vision":
        blocks = vision_blocks(model)[: last_tapped_layer(model)]   # clipseg_adapter.py:232-234: max(extract)
        if family == "clipseg":
            return [(b.self_attn, b.mlp) for b in blocks]
        return [(b.attn, b.mlp) for b in blocks]
    n = last_tapped_layer(model) if family != "cris" else DENSE_LAYERS
    blocks = text_blocks(model)[:n]
    if family == "clipseg":
        return [(b.self_attn, b.mlp) for b in blocks]
    if family == "biomedclipseg":  # post-norm BERT: dense -> dropout -> LayerNorm(. + residual)
        return [(b.attention.output.dropout, b.output.dropout) for b in blocks]
    return [(b.attn, b.mlp) for b in blocks]  # CRIS: open_clip ResidualAttentionBlock


def build_dense(model, opts: dict) -> DenseAdapters:
    family = model_family(model)
    supported = PARTS if family != "cris" else ("text", "cond")
    parts = resolve_parts(model, "adapter-dense", opts["adapter_in"], supported)
    if family == "clipseg":
        cfg = model.hf.config
        v_dim, t_dim, c_dim = cfg.vision_config.hidden_size, cfg.text_config.hidden_size, cfg.projection_dim
    elif family == "biomedclipseg":
        v_dim, t_dim = model.visual.trunk.embed_dim, model.text.config.hidden_size
        c_dim = model.text.proj[-1].out_features
    else:
        v_dim, t_dim, c_dim = None, model.config.transformer_width, model.config.word_dim
    vision = dense_sites(model, "vision") if "vision" in parts else []
    text = dense_sites(model, "text") if "text" in parts else []
    method = DenseAdapters(family, [v_dim] * len(vision), [t_dim] * len(text), c_dim if "cond" in parts else None,
                           int(opts["adapter_dim"]))
    method.attach(vision, text)
    method.parts = parts
    return method
