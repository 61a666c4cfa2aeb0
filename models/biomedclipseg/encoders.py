"""BiomedCLIP's image and text encoders, with the state-dict layout of open_clip's BiomedCLIP
``CustomTextCLIP`` (``visual.trunk.*``, ``visual.head.proj``, ``text.transformer.*``, ``text.proj.*``)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


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
