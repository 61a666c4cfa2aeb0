"""Small building blocks of the CRIS neck, decoder and projector, and the fixed sine positional encodings.

``nn.Sequential`` indices reproduce the original CRIS key names (``0`` conv, ``1`` BN, ...).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
