"""CRIS (CLIP-Driven Referring Image Segmentation, Wang et al., CVPR 2022) with a CLIP ResNet-50 backbone.

Architecture (facts checked against ``../shared/reference/cris``; the golden test matches the
original implementation's output and intermediates within 2e-4):

* ``backbone``: an open_clip ``CLIP`` (ModifiedResNet image tower + text transformer, QuickGELU).
  Its attention pool is replaced by :class:`DenseAttentionPool`, which keeps CLIP's q/k/v/c_proj
  weights and positional table but attends densely over all ``h*w`` tokens (no class token; the
  7x7 table, row 0 dropped, is resized bicubically to ``h x w``) and adds a residual 1x1 conv-BN
  branch ``connect`` (new in CRIS).  Taps: C3 = layer2, C4 = layer3, C5 = dense attnpool(layer4).
  Text: word features = ``ln_final`` output of the whole sequence (not projected); sentence
  state = EOT feature (position ``argmax(ids)``) ``@ text_projection``.  The causal mask has the
  size of the input sequence (the original builds it with ``word_len``: same thing).
* ``neck``: :class:`FPNNeck`, text enters only through ``C5 * state``; output stride 16.
* ``decoder``: :class:`VisionLanguageDecoder`, pre-norm layers with self-attention on visual
  tokens, cross-attention to the words (key padding mask), FFN; fixed sine positional encodings.
* ``proj``: :class:`Projector`, upsamples x4 and convolves each sample with its own 3x3 kernel
  predicted from the sentence state.  Output: raw logits ``(B, 1, S/4, S/4)``.

Naming: the modules are named exactly as in the original code, so ``model.state_dict()`` *is* the
original CRIS naming (662 keys for RN50); checkpoint I/O only adds/strips the ``module.`` prefix
that the original DDP training wrote.  See ``docs/cris.md``.

Text: CLIP BPE, ``[SOT] ids [EOT]`` padded with id 0 to ``word_len`` (default 77, CLIP's full
context: the longest medical prompts, P9 with a general description and a location, need about
35 tokens, and radiology prompts listing several findings more; the original used 17/22 for
RefCOCO).  The decoder ignores pad positions: from ``attention_mask`` when given, otherwise
``input_ids == pad_id`` (0), so results do not depend on ``word_len``.
"""
from __future__ import annotations

import math
import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .base import CLIP_MEAN, CLIP_STD, SegModel
from .hub import offline
from .text import ClipTokenizer

PAD_ID = 0
DEFAULT_WORD_LEN = 77
OPENAI_RN50_URL = ("https://openaipublic.azureedge.net/clip/models/"
                   "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")
OPENAI_RN50_HF_REPO = "timm/resnet50_clip.openai"
# keys a CLIP file may carry besides the weights (OpenAI metadata; TorchScript keeps open_clip's causal mask)
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class CRISConfig:
    """All dimensions of a CRIS model.  Defaults = CRIS-R50 (``config/refcoco/cris_r50.yaml``)."""

    # CLIP (names as in the original ``build_model``)
    embed_dim: int = 1024
    image_resolution: int = 224          # attnpool grid = image_resolution // 32
    vision_layers: tuple = (3, 4, 6, 3)
    vision_width: int = 64
    attnpool_heads: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    # CRIS
    input_size: int = 416
    word_len: int = DEFAULT_WORD_LEN
    word_dim: int = 1024
    vis_dim: int = 512
    fpn_in: tuple = (512, 1024, 1024)
    fpn_out: tuple = (256, 512, 1024)
    num_layers: int = 3
    num_head: int = 8
    dim_ffn: int = 2048
    dropout: float = 0.1
    proj_kernel_size: int = 3

    def __post_init__(self):
        self.vision_layers = tuple(self.vision_layers)
        self.fpn_in = tuple(self.fpn_in)
        self.fpn_out = tuple(self.fpn_out)
        w = self.vision_width
        expected_in = (w * 8, w * 16, self.embed_dim)
        if self.fpn_in != expected_in:
            raise ValueError(f"fpn_in {self.fpn_in} does not match the CLIP ResNet (C3, C4, C5 channels "
                             f"{expected_in} for vision_width {w}, embed_dim {self.embed_dim})")
        if self.word_dim != self.embed_dim:
            raise ValueError(f"word_dim ({self.word_dim}) must equal CLIP embed_dim ({self.embed_dim})")
        if self.vis_dim != self.fpn_out[1] or self.transformer_width != self.vis_dim:
            raise ValueError(f"vis_dim ({self.vis_dim}) must equal fpn_out[1] ({self.fpn_out[1]}) and the "
                             f"text width ({self.transformer_width})")
        if self.word_len > self.context_length:
            raise ValueError(f"word_len {self.word_len} exceeds CLIP's context length {self.context_length}")
        if self.input_size % 32:
            raise ValueError(f"input_size {self.input_size} must be a multiple of 32")

    @classmethod
    def from_dict(cls, d: dict) -> "CRISConfig":
        """Build from a flat dict or the golden file's ``{"clip": {...}, "cris": {...}}``.

        Derived or informational keys of the golden config (``txt_length``, ``attnpool_embed_dim``,
        ``attnpool_spacial_dim``, ``intermediate``, ``proj_in_dim``) are checked, not stored.
        """
        flat = {}
        for part in ("clip", "cris"):
            flat.update(d.get(part, {}))
        flat.update({k: v for k, v in d.items() if k not in ("clip", "cris")})
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in flat.items() if k in names})
        checks = {"attnpool_embed_dim": cfg.vision_width * 32, "attnpool_spacial_dim": cfg.image_resolution // 32,
                  "proj_in_dim": cfg.vis_dim // 2, "intermediate": False}
        for k, want in checks.items():
            if k in flat and flat[k] != want:
                raise ValueError(f"config {k}={flat[k]!r} is not supported (this implementation has {want!r})")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "base": CRISConfig(),
    # small CPU-friendly CRIS for tests and the synthetic demo (128 px input, real CLIP vocabulary)
    "tiny": CRISConfig(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                       attnpool_heads=4, transformer_width=32, transformer_heads=2, transformer_layers=2,
                       input_size=128, word_dim=64, vis_dim=32, fpn_in=(64, 128, 64), fpn_out=(16, 32, 64),
                       num_layers=2, num_head=2, dim_ffn=64),
}


# --------------------------------------------------------------------------------------------
# building blocks (Sequential indices reproduce the original key names)
# --------------------------------------------------------------------------------------------
def conv_bn_relu(cin: int, cout: int, kernel_size: int = 1) -> nn.Sequential:
    """``0`` conv (no bias, padding k//2), ``1`` BN, ``2`` ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BatchNorm1dAnyBatch(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a training batch of one sample.

    The original raises on a batch of one in training; using the running statistics (without
    updating them) for that single batch is the least surprising alternative.  Same keys as BN1d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


def linear_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout, bias=False), BatchNorm1dAnyBatch(cout), nn.ReLU(inplace=True))


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def add_coord_channels(x: torch.Tensor) -> torch.Tensor:
    """Append x (varies along width) and y (varies along height) in [-1, 1] as two channels."""
    b, _, h, w = x.shape
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


class CoordConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + 2, cout, kernel_size)

    def forward(self, x):
        return self.conv1(add_coord_channels(x))


def _calc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Positional encodings are computed in float64 for float64 models, else in float32 (as the original)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sine_pos_1d(d: int, length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(L, 1, d): channel 2i = sin(l * 10000^(-2i/d)), 2i+1 = cos(same); l = 0..L-1."""
    cd = _calc_dtype(dtype)
    pos = torch.arange(length, dtype=cd, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=cd, device=device) * -(math.log(10000.0) / d))
    pe = torch.zeros(length, d, device=device, dtype=cd)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.unsqueeze(1).to(dtype)


def sine_pos_2d(d: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h*w, 1, d), token index y*w + x.  First half of the channels encodes x, second half y,
    each as interleaved sin/cos with freq_i = 10000^(-2i/(d/2))."""
    if d % 4:
        raise ValueError(f"2-D sine encoding needs a channel count divisible by 4, got {d}")
    half = d // 2
    cd = _calc_dtype(dtype)
    freq = torch.exp(torch.arange(0, half, 2, dtype=cd, device=device) * -(math.log(10000.0) / half))
    xs = torch.arange(w, dtype=cd, device=device).unsqueeze(1) * freq  # (w, half/2)
    ys = torch.arange(h, dtype=cd, device=device).unsqueeze(1) * freq  # (h, half/2)
    pe = torch.zeros(d, h, w, device=device, dtype=cd)
    pe[0:half:2] = torch.sin(xs).T.unsqueeze(1).expand(-1, h, -1)
    pe[1:half:2] = torch.cos(xs).T.unsqueeze(1).expand(-1, h, -1)
    pe[half::2] = torch.sin(ys).T.unsqueeze(2).expand(-1, -1, w)
    pe[half + 1::2] = torch.cos(ys).T.unsqueeze(2).expand(-1, -1, w)
    return pe.reshape(d, h * w).T.unsqueeze(1).to(dtype)


# --------------------------------------------------------------------------------------------
# CLIP backbone (open_clip) with the dense attention pool
# --------------------------------------------------------------------------------------------
def _attention_pool_base():
    from open_clip.modified_resnet import AttentionPool2d
    return AttentionPool2d


class DenseAttentionPool(_attention_pool_base()):
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
    vision_cfg = dict(layers=tuple(cfg.vision_layers), width=cfg.vision_width, image_size=cfg.image_resolution,
                      head_width=cfg.vision_width * 32 // cfg.attnpool_heads)
    text_cfg = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.transformer_width,
                    heads=cfg.transformer_heads, layers=cfg.transformer_layers)
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


# --------------------------------------------------------------------------------------------
# neck, decoder, projector
# --------------------------------------------------------------------------------------------
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

    def forward(self, c3, c4, c5, state, record: dict | None = None):
        rec = record if record is not None else {}
        state = self.txt_proj(state)
        rec["neck.state_proj"] = state
        f5 = self.norm_layer(self.f1_v_proj(c5) * state[:, :, None, None])
        f4 = self.f2_cat(torch.cat([self.f2_v_proj(c4), upsample2(f5)], dim=1))
        f3 = self.f3_cat(torch.cat([F.avg_pool2d(self.f3_v_proj(c3), 2, 2), f4], dim=1))
        fq5 = self.f4_proj5(f5)
        fq4 = self.f4_proj4(f4)
        fq3 = self.f4_proj3(f3)
        fq = self.aggr(torch.cat([fq3, fq4, upsample2(fq5)], dim=1))
        out = self.coordconv(fq)
        rec.update({"neck.f5": f5, "neck.f4": f4, "neck.f3": f3, "neck.fq5": fq5, "neck.fq4": fq4,
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

    def forward(self, vis, txt, pad_mask, record: dict | None = None):
        """vis (B, d, H, W), txt (B, L, d), pad_mask (B, L) True = ignore -> (B, d, H*W)."""
        rec = record if record is not None else {}
        b, c, h, w = vis.shape
        vis_pos = sine_pos_2d(c, h, w, device=vis.device, dtype=vis.dtype)
        txt_pos = sine_pos_1d(c, txt.shape[1], device=vis.device, dtype=vis.dtype)
        rec["decoder.vis_pos"], rec["decoder.txt_pos"] = vis_pos, txt_pos
        x = vis.flatten(2).permute(2, 0, 1)
        t = txt.permute(1, 0, 2)
        for i, layer in enumerate(self.layers):
            x = layer(x, t, vis_pos, txt_pos, pad_mask)
            rec[f"decoder.layer{i}"] = x
        out = self.norm(x).permute(1, 2, 0)
        rec["decoder.out"] = out
        return out


class Projector(nn.Module):
    """Visual branch x4 upsampling to ``in_dim`` channels; text branch -> one k x k kernel + bias per sample."""

    def __init__(self, word_dim: int = 1024, in_dim: int = 256, kernel_size: int = 3):
        super().__init__()
        self.in_dim, self.kernel_size = in_dim, kernel_size
        self.vis = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 conv_bn_relu(in_dim * 2, in_dim * 2, 3),
                                 nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 conv_bn_relu(in_dim * 2, in_dim, 3),
                                 nn.Conv2d(in_dim, in_dim, 1))
        self.txt = nn.Linear(word_dim, in_dim * kernel_size * kernel_size + 1)

    def forward(self, x, state, record: dict | None = None):
        rec = record if record is not None else {}
        x = self.vis(x)
        b, c, h, w = x.shape
        params = self.txt(state)
        k = self.kernel_size
        weight = params[:, :-1].reshape(b, c, k, k)
        bias = params[:, -1]
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias=bias, padding=k // 2, groups=b)
        rec.update({"proj.vis": x, "proj.txt": params, "proj.dyn_weight": weight, "proj.dyn_bias": bias})
        return out.transpose(0, 1)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
class CRIS(SegModel):
    """CRIS as a :class:`SegModel`: ``forward(pixel_values, input_ids, attention_mask=None)`` -> logits
    (B, 1, S/4, S/4).  Images are CLIP-normalised; threshold 0.35 on the sigmoid as in the original."""

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
        bb = self.backbone
        # not registered as a child: no extra state-dict keys
        object.__setattr__(self, "_text_params", ParamGroup({
            "positional_embedding": bb.positional_embedding, "text_projection": bb.text_projection,
            "logit_scale": bb.logit_scale}))

    # ---- parts used by freeze() / per-group learning rates --------------------------------
    def image_encoder_modules(self) -> list[nn.Module]:
        return [self.backbone.visual]

    def text_encoder_modules(self) -> list[nn.Module]:
        bb = self.backbone
        return [bb.token_embedding, bb.transformer, bb.ln_final, self._text_params]

    # ---- encoders ----------------------------------------------------------------------------
    def encode_image(self, x: torch.Tensor, record: dict | None = None):
        """-> C3 (stride 8), C4 (stride 16), C5 (stride 32, embed_dim channels)."""
        rec = record if record is not None else {}
        v = self.backbone.visual
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen["image"]):
            x = v.layer1(v.stem(x.to(v.conv1.weight.dtype)))
            c3 = v.layer2(x)
            c4 = v.layer3(c3)
            x4 = v.layer4(c4)
            c5 = v.attnpool(x4)
        rec.update({"backbone.layer1": x, "backbone.C3": c3, "backbone.C4": c4, "backbone.layer4": x4,
                    "backbone.C5": c5})
        return c3, c4, c5

    def encode_text(self, input_ids: torch.Tensor, record: dict | None = None):
        """-> word features (B, L, width) after ln_final, sentence state (B, embed_dim)."""
        rec = record if record is not None else {}
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
        rec.update({"text.word": words, "text.state": state})
        return words, state

    def padding_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """True where a word position must be ignored: ``attention_mask == 0`` if given, else ``ids == pad_id``."""
        if attention_mask is not None:
            return attention_mask.to(input_ids.device) == 0
        return input_ids == self.pad_id

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_intermediates: bool = False):
        if input_ids is None:
            raise ValueError("CRIS needs a text prompt (input_ids); use prompt p0 for an empty prompt")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"got {pixel_values.shape[0]} images but {input_ids.shape[0]} prompts")
        s = pixel_values.shape[-1]
        if pixel_values.shape[-2] != s or s % 32:
            raise ValueError(f"CRIS needs square images with a side divisible by 32, got {tuple(pixel_values.shape)}")
        rec = {} if return_intermediates else None  # None: no intermediate is kept alive past its use
        c3, c4, c5 = self.encode_image(pixel_values, rec)
        words, state = self.encode_text(input_ids, rec)
        pad = self.padding_mask(input_ids, attention_mask)
        fq = self.neck(c3, c4, c5, state, rec)
        b, c, h, w = fq.shape
        fq = self.decoder(fq, words, pad, rec).reshape(b, c, h, w)
        logits = self.proj(fq, state, rec)
        if rec is not None:
            rec.update({"pad_mask": pad, "decoder.out_reshaped": fq})
        return (logits, rec) if return_intermediates else logits


# --------------------------------------------------------------------------------------------
# state dicts and checkpoints in the original naming
# --------------------------------------------------------------------------------------------
def _strip_prefix(sd: dict, prefix: str = "module.") -> dict:
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in sd.items())


_RESBLOCK_PART_ORDER = ("attn.", "ln_1.", "mlp.", "ln_2.")  # original CLIP's registration order
_RESBLOCK_RE = re.compile(r"^(.*transformer\.resblocks\.\d+\.)")


def original_key_order(keys: list[str]) -> list[str]:
    """Reorder keys as the original code lists them: open_clip registers a text block's ``ln_1`` before
    ``attn``, OpenAI's CLIP (used by CRIS) after it.  Only the order inside each text block changes."""
    out, i = [], 0
    while i < len(keys):
        m = _RESBLOCK_RE.match(keys[i])
        if not m:
            out.append(keys[i])
            i += 1
            continue
        prefix, group = m.group(1), []
        while i < len(keys) and keys[i].startswith(prefix):
            group.append(keys[i])
            i += 1
        rank = {p: r for r, p in enumerate(_RESBLOCK_PART_ORDER)}
        group.sort(key=lambda k: next((r for p, r in rank.items() if k[len(prefix):].startswith(p)), len(rank)))
        out += group
    return out


def export_original_state_dict(model: CRIS) -> "OrderedDict[str, torch.Tensor]":
    """The state dict in the original CRIS naming and key order (unwrapped, no ``module.``), detached on CPU.

    The project's module names are the original ones, so the mapping is the identity."""
    sd = model.state_dict()
    return OrderedDict((k, sd[k].detach().cpu()) for k in original_key_order(list(sd)))


def _list(keys, n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_original_state_dict(model: CRIS, state_dict: dict, source: str = "state dict") -> CRIS:
    """Load a state dict in the original naming (``module.`` prefixes stripped), strictly.

    Raises ``KeyError`` listing missing/unexpected keys, ``ValueError`` listing shape mismatches."""
    sd = _strip_prefix(state_dict)
    own = model.state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise KeyError(f"{source} does not match this CRIS ({len(own)} keys; is it a CRIS state dict of the same "
                       f"size?): missing {len(missing)} [{_list(missing)}]; unexpected {len(unexpected)} "
                       f"[{_list(unexpected)}]")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{source} has {len(bad)} tensors of the wrong shape (built with another config?): "
                         + "; ".join(bad[:6]))
    model.load_state_dict(sd, strict=True)
    return model


def safe_torch_load(path: str, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` with clear errors; never unpickles code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (needs code) or a corrupt file
        raise ValueError(
            f"could not load {what} '{path}' safely (torch.load weights_only=True): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}\nThe file needs more than tensors and plain Python "
            f"containers to unpickle (or is not a torch file). Re-save only the weights where it was made, e.g. "
            f"torch.save({{'state_dict': ckpt['state_dict']}}, 'clean.pth'), and pass that file.") from e


def load_cris_checkpoint(model: CRIS, path: str) -> dict:
    """Load a checkpoint of the original CRIS training code (``{'state_dict': {'module.…': …}, 'epoch', …}``),
    a project checkpoint with ``state_dict``/``model``, or a bare state dict.  Returns the other entries."""
    ckpt = safe_torch_load(path, "CRIS checkpoint")
    if not isinstance(ckpt, dict):
        raise ValueError(f"CRIS checkpoint '{path}' holds a {type(ckpt).__name__}, expected a dict")
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], dict):
            sd, meta = ckpt[key], {k: v for k, v in ckpt.items() if k != key}
            break
    else:
        if not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ValueError(f"CRIS checkpoint '{path}' has no 'state_dict' entry (keys: {_list(ckpt)})")
        sd, meta = ckpt, {}
    load_original_state_dict(model, sd, source=f"CRIS checkpoint '{path}'")
    return meta


def save_cris_checkpoint(model: CRIS, path: str, epoch: int = 0, cur_iou: float = 0.0, best_iou: float = 0.0,
                         prec: dict | None = None, **extra) -> str:
    """Write the original training code's format: ``state_dict`` keys prefixed ``module.`` (as DDP saved
    them), plus ``epoch``, ``cur_iou``, ``best_iou``, ``prec``; ``extra`` (e.g. optimizer/scheduler state
    dicts) is stored as given.  The original ``test.py`` can load the result."""
    sd = OrderedDict(("module." + k, v) for k, v in export_original_state_dict(model).items())
    prec = prec if prec is not None else {f"Pr@{t}": 0.0 for t in (50, 60, 70, 80, 90)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(dict(epoch=int(epoch), cur_iou=float(cur_iou), best_iou=float(best_iou), prec=prec,
                    state_dict=sd, **extra), path)
    return path


# --------------------------------------------------------------------------------------------
# OpenAI CLIP RN50 weights
# --------------------------------------------------------------------------------------------
def _cached_openai_rn50() -> str | None:
    """RN50 weights already on disk: open_clip's URL cache or the Hugging Face cache (no network)."""
    url_cache = os.path.join(os.path.expanduser("~/.cache/clip"), "RN50.pt")
    if os.path.isfile(url_cache):
        return url_cache
    try:
        from huggingface_hub import try_to_load_from_cache
        cache_dir = os.environ.get("HF_HUB_CACHE")
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(OPENAI_RN50_HF_REPO, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    except ImportError:
        pass
    return None


def resolve_openai_rn50() -> str:
    """Path of OpenAI's CLIP RN50 weights: cached, else downloaded through open_clip (unless offline)."""
    hit = _cached_openai_rn50()
    if hit:
        return hit
    help_text = (f"Download RN50.pt ({OPENAI_RN50_URL}) on a machine with internet, copy it here and pass "
                 f"--weights /path/RN50.pt (or put it in ~/.cache/clip/); or use --weights none.")
    if offline():
        raise FileNotFoundError(f"CLIP RN50 weights ('openai') are not cached and downloads are off "
                                f"(HF_HUB_OFFLINE/VLSM_OFFLINE). {help_text}")
    try:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg
        return download_pretrained(get_pretrained_cfg("RN50", "openai"))
    except Exception as e:
        raise FileNotFoundError(f"could not get CLIP RN50 weights ('openai'): {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}. {help_text}") from e


def read_clip_state_dict(path: str) -> dict:
    """OpenAI TorchScript archive (``RN50.pt``), safetensors, or a (safe) torch state dict -> float32 dict
    in OpenAI/open_clip naming.  ``module.``, ``backbone.`` and ``clip.`` prefixes are stripped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights file '{path}' does not exist. Pass the OpenAI RN50.pt "
                                f"(--weights /path/RN50.pt) or --weights openai.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    elif zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") or "/code/" in n
                                          for n in zipfile.ZipFile(path).namelist()):
        sd = torch.jit.load(path, map_location="cpu").state_dict()  # OpenAI's TorchScript release
    else:
        sd = safe_torch_load(path, "CLIP weights")
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"CLIP weights file '{path}' does not hold a state dict")
    out = OrderedDict()
    for k, v in sd.items():
        for prefix in ("module.", "backbone.", "clip."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k in OPENAI_META_KEYS:
            continue
        out[k] = v.float() if torch.is_tensor(v) and v.is_floating_point() else v
    return out


def load_clip_weights(model: CRIS, weights: str) -> CRIS:
    """Load CLIP weights into ``model.backbone``; only ``visual.attnpool.connect.*`` (new in CRIS) may be missing."""
    path = resolve_openai_rn50() if weights == "openai" else weights
    sd = read_clip_state_dict(path)
    own = model.backbone.state_dict()
    new_in_cris = {k for k in own if k.startswith("visual.attnpool.connect.")}
    missing, unexpected = set(own) - set(sd) - new_in_cris, set(sd) - set(own)
    if missing or unexpected:
        raise KeyError(f"'{path}' is not a CLIP RN50-style state dict for this CRIS: missing {len(missing)} "
                       f"[{_list(missing)}]; unexpected {len(unexpected)} [{_list(unexpected)}]")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd
           if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"CLIP weights '{path}' do not fit this CRIS size ({len(bad)} shape mismatches, e.g. "
                         + "; ".join(bad[:4]) + "). OpenAI RN50 weights need size='base'.")
    model.backbone.load_state_dict(sd, strict=False)
    return model


# --------------------------------------------------------------------------------------------
# builder (registered as "cris")
# --------------------------------------------------------------------------------------------
def build_cris(weights: str | None = None, size: str = "base", word_len: int | None = None, dropout: float | None = None,
               cris_checkpoint: str | None = None, input_size: int | None = None, config: dict | None = None,
               **cfg) -> CRIS:
    """Build CRIS.

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
    names = set(base)
    unknown = set(cfg) - names
    if unknown:
        raise TypeError(f"unknown CRIS options: {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")
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


# --------------------------------------------------------------------------------------------
# Command line: export a checkpoint of this project to the original CRIS format
# --------------------------------------------------------------------------------------------
def export_main(argv: list[str] | None = None) -> str:
    """``python -m models.cris RUN_OR_PTH OUT.pth``: a CRIS trained with train.py -> original ``test.py`` format."""
    import argparse

    import engine
    p = argparse.ArgumentParser("python -m models.cris", description=export_main.__doc__)
    p.add_argument("checkpoint", help="run folder (best.pth) or .pth written by train.py --model cris")
    p.add_argument("out", help="output .pth in the original CRIS format (must not exist)")
    args = p.parse_args(argv)
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; refusing to overwrite it")
    model, ckpt = engine.model_from_checkpoint(args.checkpoint)
    if not isinstance(model, CRIS):
        raise SystemExit(f"{args.checkpoint} holds a '{ckpt.get('model_name')}' model, not CRIS")
    path = save_cris_checkpoint(model, args.out, epoch=int(ckpt.get("epoch", 0)),
                                best_iou=float(ckpt.get("best_dice", 0.0)))
    print(f"wrote {path} (original CRIS format, keys prefixed 'module.')")
    return path


if __name__ == "__main__":
    export_main()
