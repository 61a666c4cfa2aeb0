"""CRIS after the backbone: the text-fused FPN neck, the vision-language transformer decoder and the
dynamic-kernel projector.

Each ``forward`` takes an optional ``intermediates`` dict and stores its named intermediate tensors in it
(the names the golden test compares with the original implementation); with ``None`` nothing is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CoordConv, conv_bn_relu, linear_bn_relu, sine_pos_1d, sine_pos_2d, upsample2


class FPNNeck(nn.Module):
    """Fuse C3/C4/C5 with the sentence state into one (B, out[1], H/16, W/16) map."""

    def __init__(self, in_channels=(512, 1024, 1024), out_channels=(256, 512, 1024), state_dim: int = 1024):
        super().__init__()
        c3, c4, c5 = in_channels
        o3, o4, o5 = out_channels
        self.txt_proj = linear_bn_relu(state_dim, o5)
        self.f1_v_proj = conv_bn_relu(c5, o5, 1)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(o5), nn.ReLU(inplace=True))
        self.f2_v_proj = conv_bn_relu(c4, o4, 3)
        self.f2_cat = conv_bn_relu(o4 + o5, o4, 1)
        self.f3_v_proj = conv_bn_relu(c3, o3, 3)
        self.f3_cat = conv_bn_relu(o3 + o4, o4, 1)
        self.f4_proj5 = conv_bn_relu(o5, o4, 3)
        self.f4_proj4 = conv_bn_relu(o4, o4, 3)
        self.f4_proj3 = conv_bn_relu(o4, o4, 3)
        self.aggr = conv_bn_relu(3 * o4, o4, 1)
        self.coordconv = nn.Sequential(CoordConv(o4, o4, 3), conv_bn_relu(o4, o4, 3))

    def forward(self, c3, c4, c5, state, intermediates: dict | None = None):
        keep = intermediates if intermediates is not None else {}
        state = self.txt_proj(state)
        keep["neck.state_proj"] = state
        f5 = self.norm_layer(self.f1_v_proj(c5) * state[:, :, None, None])
        f4 = self.f2_cat(torch.cat([self.f2_v_proj(c4), upsample2(f5)], dim=1))
        f3 = self.f3_cat(torch.cat([F.avg_pool2d(self.f3_v_proj(c3), 2, 2), f4], dim=1))
        fq5 = self.f4_proj5(f5)
        fq4 = self.f4_proj4(f4)
        fq3 = self.f4_proj3(f3)
        fq = self.aggr(torch.cat([fq3, fq4, upsample2(fq5)], dim=1))
        out = self.coordconv(fq)
        keep.update({"neck.f5": f5, "neck.f4": f4, "neck.f3": f3, "neck.fq5": fq5, "neck.fq4": fq4,
                     "neck.fq3": fq3, "neck.aggr": fq, "neck.out": out})
        return out


class DecoderLayer(nn.Module):
    """Pre-norm layer: self-attention (vision), cross-attention (vision -> words), FFN.

    Tensors are sequence-first: vis (HW, B, d), txt (L, B, d); positions are added to queries and
    keys only.  Each attention output gets its own LayerNorm before the residual add."""

    def __init__(self, d_model: int = 512, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, kdim=d_model, vdim=d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.LayerNorm(dim_feedforward), nn.Linear(dim_feedforward, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, vis, txt, vis_pos, txt_pos, pad_mask):
        v = self.norm1(vis)
        q = k = v + vis_pos
        v = self.self_attn(q, k, value=v, need_weights=False)[0]
        vis = vis + self.dropout1(self.self_attn_norm(v))
        v = self.norm2(vis)
        v = self.multihead_attn(query=v + vis_pos, key=txt + txt_pos, value=txt,
                                key_padding_mask=pad_mask, need_weights=False)[0]
        vis = vis + self.dropout2(self.cross_attn_norm(v))
        vis = vis + self.dropout3(self.ffn(self.norm3(vis)))
        return vis


class VisionLanguageDecoder(nn.Module):
    def __init__(self, num_layers: int = 3, d_model: int = 512, nhead: int = 8, dim_ffn: int = 2048,
                 dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(d_model, nhead, dim_ffn, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, vis, txt, pad_mask, intermediates: dict | None = None):
        """vis (B, d, H, W), txt (B, L, d), pad_mask (B, L) True = ignore -> (B, d, H*W)."""
        keep = intermediates if intermediates is not None else {}
        _b, c, h, w = vis.shape
        vis_pos = sine_pos_2d(c, h, w, device=vis.device, dtype=vis.dtype)
        txt_pos = sine_pos_1d(c, txt.shape[1], device=vis.device, dtype=vis.dtype)
        keep["decoder.vis_pos"], keep["decoder.txt_pos"] = vis_pos, txt_pos
        x = vis.flatten(2).permute(2, 0, 1)
        t = txt.permute(1, 0, 2)
        for i, layer in enumerate(self.layers):
            x = layer(x, t, vis_pos, txt_pos, pad_mask)
            keep[f"decoder.layer{i}"] = x
        out = self.norm(x).permute(1, 2, 0)
        keep["decoder.out"] = out
        return out


class Projector(nn.Module):
    """Visual branch x4 upsampling to ``in_dim`` channels; text branch -> one k x k kernel + bias per sample."""

    def __init__(self, word_dim: int = 1024, in_dim: int = 256, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 conv_bn_relu(in_dim * 2, in_dim * 2, 3),
                                 nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 conv_bn_relu(in_dim * 2, in_dim, 3),
                                 nn.Conv2d(in_dim, in_dim, 1))
        self.txt = nn.Linear(word_dim, in_dim * kernel_size * kernel_size + 1)

    def forward(self, x, state, intermediates: dict | None = None):
        keep = intermediates if intermediates is not None else {}
        x = self.vis(x)
        b, c, h, w = x.shape
        params = self.txt(state)
        k = self.kernel_size
        weight = params[:, :-1].reshape(b, c, k, k)
        bias = params[:, -1]
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias=bias, padding=k // 2, groups=b)
        keep.update({"proj.vis": x, "proj.txt": params, "proj.dyn_weight": weight, "proj.dyn_bias": bias})
        return out.transpose(0, 1)
