"""The CRIS :class:`SegModel`: backbone -> neck -> decoder -> projector (see the package docstring)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import CLIP_MEAN, CLIP_STD, SegModel
from ..text import ClipTokenizer
from .backbone import build_clip_backbone, text_param_group
from .config import PAD_ID, CRISConfig
from .decoder import FPNNeck, Projector, VisionLanguageDecoder


class CRIS(SegModel):
    """CRIS as a :class:`SegModel`: ``forward(pixel_values, input_ids, attention_mask=None)`` -> logits
    (B, 1, S/4, S/4), i.e. ``decode(encode_image(...), encode_text(...))``: backbone features C3-C5, text features
    (words, state, padding mask), then neck + decoder + projector.  Images are CLIP-normalised; threshold 0.35 on
    the sigmoid as in the original."""

    name = "cris"
    image_mean = CLIP_MEAN
    image_std = CLIP_STD
    default_threshold = 0.35

    def __init__(self, config: CRISConfig | None = None):
        super().__init__()
        cfg = config or CRISConfig()
        self.config = cfg
        self.input_size = cfg.input_size
        self.pad_id = PAD_ID
        self.backbone = build_clip_backbone(cfg)
        self.neck = FPNNeck(cfg.fpn_in, cfg.fpn_out, state_dim=cfg.word_dim)
        self.decoder = VisionLanguageDecoder(cfg.num_layers, cfg.vis_dim, cfg.num_head, cfg.dim_ffn, cfg.dropout)
        self.proj = Projector(cfg.word_dim, cfg.vis_dim // 2, cfg.proj_kernel_size)
        self.tokenizer = ClipTokenizer(context_length=cfg.word_len, pad_id=PAD_ID)
        # not registered as a child: no extra state-dict keys
        object.__setattr__(self, "_text_params", text_param_group(self.backbone))

    # ---- parts used by freeze() / per-group learning rates --------------------------------
    def image_encoder_modules(self) -> list[nn.Module]:
        return [self.backbone.visual]

    def text_encoder_modules(self) -> list[nn.Module]:
        bb = self.backbone
        return [bb.token_embedding, bb.transformer, bb.ln_final, self._text_params]

    # ---- encoders and decoder (forward composes them) ------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, intermediates: dict | None = None):
        """-> (C3 (stride 8), C4 (stride 16), C5 (stride 32, embed_dim channels)): the backbone's features."""
        s = pixel_values.shape[-1]
        if pixel_values.shape[-2] != s or s % 32:
            raise ValueError(f"CRIS needs square images with a side divisible by 32, got {tuple(pixel_values.shape)}")
        keep = intermediates if intermediates is not None else {}
        v = self.backbone.visual
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen["image"]):
            x = v.layer1(v.stem(pixel_values.to(v.conv1.weight.dtype)))
            c3 = v.layer2(x)
            c4 = v.layer3(c3)
            x4 = v.layer4(c4)
            c5 = v.attnpool(x4)
        keep.update({"backbone.layer1": x, "backbone.C3": c3, "backbone.C4": c4, "backbone.layer4": x4,
                     "backbone.C5": c5})
        return c3, c4, c5

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    intermediates: dict | None = None):
        """-> (word features (B, L, width) after ln_final, sentence state (B, embed_dim), padding mask (B, L),
        True where the decoder ignores a word position)."""
        keep = intermediates if intermediates is not None else {}
        bb = self.backbone
        L = input_ids.shape[1]
        if L > bb.positional_embedding.shape[0]:
            raise ValueError(f"input_ids have {L} positions but CLIP's text context is "
                             f"{bb.positional_embedding.shape[0]}; tokenize with a shorter word_len")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen["text"]):
            x = bb.token_embedding(input_ids) + bb.positional_embedding[:L]
            causal = torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
            x = bb.transformer(x, attn_mask=causal)
            words = bb.ln_final(x)
            eot = input_ids.argmax(dim=-1)
            state = words[torch.arange(words.shape[0], device=words.device), eot] @ bb.text_projection
        pad = self.padding_mask(input_ids, attention_mask)
        keep.update({"text.word": words, "text.state": state, "pad_mask": pad})
        return words, state, pad

    def padding_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """True where a word position must be ignored: ``attention_mask == 0`` if given, else ``ids == pad_id``."""
        if attention_mask is not None:
            return attention_mask.to(input_ids.device) == 0
        return input_ids == self.pad_id

    def decode(self, image_features, text_features, intermediates: dict | None = None) -> torch.Tensor:
        """CRIS's decoder: the text-fused neck, the vision-language decoder and the projector
        -> logits (B, 1, S/4, S/4)."""
        keep = intermediates if intermediates is not None else {}
        c3, c4, c5 = image_features
        words, state, pad = text_features
        fq = self.neck(c3, c4, c5, state, intermediates)
        b, c, h, w = fq.shape
        fq = self.decoder(fq, words, pad, intermediates).reshape(b, c, h, w)
        keep["decoder.out_reshaped"] = fq
        return self.proj(fq, state, intermediates)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_intermediates: bool = False):
        """Logits (B, 1, S/4, S/4); with ``return_intermediates`` also the dict of named intermediate tensors."""
        self.check_inputs(pixel_values, input_ids)
        inter = {} if return_intermediates else None  # None: no intermediate is kept alive past its use
        logits = self.decode(self.encode_image(pixel_values, inter),
                             self.encode_text(input_ids, attention_mask, inter), inter)
        return logits if inter is None else (logits, inter)
