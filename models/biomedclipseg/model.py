"""The BiomedCLIPSeg :class:`SegModel`: BiomedCLIP encoders + CLIPSeg decoder (conventions: package docstring)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import CLIP_MEAN, CLIP_STD, SegModel
from .encoders import BiomedCLIPText, BiomedCLIPVision


class BiomedCLIPSeg(SegModel):
    """BiomedCLIP image/text encoders + CLIPSeg decoder.  ``extract_layers`` are 0-based block indices."""

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

    # the three parts (SegModel.forward composes them), as CLIPSeg has them
    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``visual.trunk.blocks[i]`` for each ``i`` in ``extract_layers``, [B, 1 + N, D] each."""
        return self.visual.tapped_hidden_states(pixel_values, self.extract_layers)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The conditional embedding: PubMedBERT's [CLS] token through BiomedCLIP's projection, [B, embed_dim]."""
        return self.text(input_ids, attention_mask)

    def decode(self, image_features: list[torch.Tensor], text_features: torch.Tensor) -> torch.Tensor:
        """The CLIPSeg decoder: tapped activations + conditional embedding -> logits (B, 1, h, w)."""
        return self.decoder(image_features, text_features).logits.unsqueeze(1)  # decoder gives [B, H, W]
