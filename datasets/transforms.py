"""Resize to the model's square input and normalise with the model's own mean/std.

Aspect ratio is not kept (as in the paper); predictions are resized back to each
image's original size before metrics.  Optional light augmentation changes only
brightness/contrast, so prompts that name colour, size or location stay true.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF


class SegTransform:
    def __init__(self, size: int, mean, std, augment: bool = False):
        self.size = int(size)
        self.mean, self.std = list(mean), list(std)
        self.augment = augment

    def __call__(self, pil_image, mask: np.ndarray):
        img = TF.pil_to_tensor(pil_image)  # uint8 3xHxW
        img = TF.resize(img, [self.size, self.size], antialias=True)
        img = TF.to_dtype(img, torch.float32, scale=True)
        if self.augment:
            img = TF.adjust_brightness(img, float(random.uniform(0.8, 1.2)))
            img = TF.adjust_contrast(img, float(random.uniform(0.8, 1.2)))
        img = TF.normalize(img, self.mean, self.std)
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)[None]
        m = TF.resize(m, [self.size, self.size], antialias=True)
        return img, (m >= 0.5).to(torch.float32)
