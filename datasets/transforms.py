"""Resize to the model's square input and normalise with the model's own mean/std.

Aspect ratio is not kept (as in the paper); predictions are resized back to each
image's original size before metrics.  Optional light augmentation changes only
brightness/contrast, so prompts that name colour, size or location stay true.

Two outputs, one resize rule: ``__call__`` gives a normalised float image (the per-sample path), ``resize``
the uint8 image and {0,1} mask at the model size that the data cache stores (datasets/cache.py); the cached
path normalises on the device (``util.runtime.prepare_images``) and augments the uint8 tensor with
``augment_uint8``, drawing the same random numbers in the same order as ``__call__``.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

BRIGHTNESS = CONTRAST = (0.8, 1.2)


def _jitter(img: torch.Tensor) -> torch.Tensor:
    """Brightness then contrast on a float [0, 1] image (two draws of ``random.uniform``)."""
    img = TF.adjust_brightness(img, float(random.uniform(*BRIGHTNESS)))
    return TF.adjust_contrast(img, float(random.uniform(*CONTRAST)))


class SegTransform:
    def __init__(self, size: int, mean, std, augment: bool = False):
        self.size = int(size)
        self.mean, self.std = list(mean), list(std)
        self.augment = augment

    def resize(self, pil_image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 3xSxS image and uint8 SxS {0,1} mask (bilinear with antialias; mask thresholded at 0.5)."""
        img = TF.resize(TF.pil_to_tensor(pil_image), [self.size, self.size], antialias=True)
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)[None]
        m = TF.resize(m, [self.size, self.size], antialias=True)
        return img, (m[0] >= 0.5).to(torch.uint8)

    def augment_uint8(self, img: torch.Tensor) -> torch.Tensor:
        """The prompt-safe augmentation on a cached uint8 image, back to uint8 (rounded)."""
        if not self.augment:
            return img
        out = _jitter(TF.to_dtype(img, torch.float32, scale=True))
        return (out * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def __call__(self, pil_image, mask: np.ndarray):
        img, m = self.resize(pil_image, mask)
        img = TF.to_dtype(img, torch.float32, scale=True)
        if self.augment:
            img = _jitter(img)
        img = TF.normalize(img, self.mean, self.std)
        return img, m[None].to(torch.float32)
