"""The CLIP RN50 backbone of CRIS: open_clip's ``CLIP`` with the dense attention pool, and the view that
groups the text tower's loose parameters for ``freeze()``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d
from torch import nn

from .config import CRISConfig


class DenseAttentionPool(AttentionPool2d):
    """CLIP's attention pool applied to every spatial token (CRIS's C5).

    Keys: ``positional_embedding`` ((1 + g*g), C), ``k_proj``/``q_proj``/``v_proj``/``c_proj``
    (as CLIP) and ``connect`` = (``0`` 1x1 conv no bias C -> out, ``1`` BN(out)).
    ``forward(x (B,C,h,w)) -> ReLU(MHA(tokens + pos) + connect(x))`` of shape (B, out, h, w).
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__(spacial_dim, embed_dim, num_heads, output_dim)
        self.spacial_dim = spacial_dim
        self.connect = nn.Sequential(nn.Conv2d(embed_dim, output_dim, 1, bias=False), nn.BatchNorm2d(output_dim))

    def spatial_positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """Rows 1.. of the table as a g x g grid, bicubically resized to h x w -> (h*w, C)."""
        table = self.positional_embedding[1:]
        g = self.spacial_dim
        grid = table.reshape(g, g, -1).permute(2, 0, 1).unsqueeze(0)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid[0].flatten(1).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = self.connect(x)
        tokens = x.flatten(2).permute(2, 0, 1)  # (hw, B, C)
        tokens = tokens + self.spatial_positional_embedding(h, w).unsqueeze(1).to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            query=tokens, key=tokens, value=tokens, embed_dim_to_check=c, num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False)
        out = out.permute(1, 2, 0).reshape(b, -1, h, w)
        return F.relu(out + residual)


def build_clip_backbone(cfg: CRISConfig) -> nn.Module:
    """open_clip ``CLIP`` (QuickGELU, OpenAI key names) with :class:`DenseAttentionPool`."""
    from open_clip.model import CLIP
    vision_cfg = {"layers": tuple(cfg.vision_layers), "width": cfg.vision_width, "image_size": cfg.image_resolution,
                  "head_width": cfg.vision_width * 32 // cfg.attnpool_heads}
    text_cfg = {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.transformer_width,
                "heads": cfg.transformer_heads, "layers": cfg.transformer_layers}
    clip = CLIP(cfg.embed_dim, vision_cfg, text_cfg, quick_gelu=True)
    visual = clip.visual
    visual.attnpool = DenseAttentionPool(cfg.image_resolution // 32, cfg.vision_width * 32, cfg.attnpool_heads,
                                         cfg.embed_dim)
    visual.init_parameters()  # CLIP's init for the new q/k/v/c_proj (and zero bn3, as before)
    return clip


class ParamGroup(nn.Module):
    """A view on parameters owned elsewhere, so ``freeze()`` can treat them as one module.

    It is kept out of the model's module tree (no duplicate state-dict keys)."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        for name, p in params.items():
            self.register_parameter(name, p)


def text_param_group(clip: nn.Module) -> ParamGroup:
    """The text tower's parameters that belong to no submodule: positions, projection, (unused) logit scale."""
    return ParamGroup({"positional_embedding": clip.positional_embedding, "text_projection": clip.text_projection,
                       "logit_scale": clip.logit_scale})
