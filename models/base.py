"""The interface every segmentation model in the registry implements.

A model takes images normalised with its own mean/std at ``input_size`` and (for
vision-language models) tokenized prompts, and returns **logits** of shape
``(B, 1, h, w)``.  ``h, w`` may be smaller than the input (CRIS gives 1/4); the
engine upsamples bilinearly for the loss and to each image's original size for
metrics.  Tokenization happens in the main process via ``model.tokenize``.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's statistics (also BiomedCLIP's preprocess_cfg)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # CLIPSeg's processor and the ImageNet CNN encoders
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegModel(nn.Module):
    """Base class: adds tokenization, freezing and metadata to an ``nn.Module``.

    Subclasses set ``input_size``, ``image_mean``, ``image_std``, ``tokenizer``
    (a picklable callable ``list[str] -> {"input_ids", "attention_mask"}``, or
    ``None`` for text-free models) and implement ``forward``,
    ``image_encoder_modules`` and ``text_encoder_modules``.
    """

    name: str = "base"
    input_size: int = 224
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    uses_text: bool = True
    default_threshold: float = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = None
        self.build_args: dict = {}  # kwargs that rebuild this model with create_model(name, **build_args)
        self.frozen = {"image": False, "text": False}

    # ---- text -------------------------------------------------------------------
    def tokenize(self, texts: list[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            return {}
        out = self.tokenizer(list(texts))
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out

    # ---- parts ------------------------------------------------------------------
    def image_encoder_modules(self) -> list[nn.Module]:
        return []

    def text_encoder_modules(self) -> list[nn.Module]:
        return []

    def encoder_parameters(self) -> Iterable[nn.Parameter]:
        seen = set()
        for m in self.image_encoder_modules() + self.text_encoder_modules():
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def freeze(self, image: bool = False, text: bool = False) -> "SegModel":
        """Freeze encoders: no gradients, and eval mode (BN/dropout) even while training."""
        if image and not self.image_encoder_modules():
            raise ValueError(f"model '{self.name}' has no separate image encoder to freeze")
        if text and not self.text_encoder_modules():
            raise ValueError(f"model '{self.name}' has no text encoder to freeze")
        self.frozen = {"image": bool(image), "text": bool(text)}
        for m in self.image_encoder_modules():
            m.requires_grad_(not image)
        for m in self.text_encoder_modules():
            m.requires_grad_(not text)
        self.train(self.training)
        return self

    def frozen_modules(self) -> list[nn.Module]:
        mods = []
        if self.frozen["image"]:
            mods += self.image_encoder_modules()
        if self.frozen["text"]:
            mods += self.text_encoder_modules()
        return mods

    def train(self, mode: bool = True):  # keep frozen parts in eval mode
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # ---- bookkeeping --------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}
