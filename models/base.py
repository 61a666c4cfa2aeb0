"""The interface every segmentation model in the registry implements.

A model takes images normalised with its own mean/std at ``input_size`` and (for
vision-language models) tokenized prompts, and returns **logits** of shape
``(B, 1, h, w)``.  ``h, w`` may be smaller than the input (CRIS gives 1/4); the
engine upsamples bilinearly for the loss and to each image's original size for
metrics.  Tokenization happens in the main process via ``model.tokenize``.

Every model is also its three parts, as timm's ``forward_features`` / ``forward_head``:
``encode_image(pixel_values)`` -> image features, ``encode_text(input_ids, attention_mask)`` -> text features
(``None`` for text-free models), ``decode(image_features, text_features)`` -> logits; ``forward`` is exactly
``decode(encode_image(x), encode_text(ids, mask))``.  Features are a tensor or a (nested) tuple/list of tensors,
batch first; what they hold is the model's business (docs/models.md, "Encoders and decoder as methods").  The
frozen-encoder feature cache and multi-prompt inference (``decode_prompts``) build on these three methods only.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's statistics (also BiomedCLIP's preprocess_cfg)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # CLIPSeg's processor and the ImageNet CNN encoders
IMAGENET_STD = (0.229, 0.224, 0.225)


def map_features(fn: Callable[[torch.Tensor], Any], features):
    """``features`` with ``fn`` applied to each of its tensors: same nesting of tuples/lists, ``None`` stays
    ``None``.  Tensors are visited in a fixed order (depth first), the order of :func:`feature_tensors`."""
    if features is None:
        return None
    if isinstance(features, (tuple, list)):
        return type(features)(map_features(fn, f) for f in features)
    return fn(features)


def feature_tensors(features) -> list[torch.Tensor]:
    """The tensors of ``features``, flattened in the order :func:`map_features` visits them."""
    out: list[torch.Tensor] = []
    map_features(out.append, features)
    return out


def feature_batch_size(features) -> int | None:
    """The batch size of ``features`` (that of its first tensor); ``None`` when there is no tensor."""
    tensors = feature_tensors(features)
    return tensors[0].shape[0] if tensors else None


class SegModel(nn.Module):
    """Base class: adds tokenization, freezing and metadata to an ``nn.Module``.

    Subclasses set ``input_size``, ``image_mean``, ``image_std``, ``tokenizer``
    (a picklable callable ``list[str] -> {"input_ids", "attention_mask"}``, or
    ``None`` for text-free models) and implement ``encode_image``, ``encode_text``
    (text models), ``decode``, ``image_encoder_modules`` and ``text_encoder_modules``.
    ``forward`` composes the three parts; a subclass that overrides it (extra
    checks or batch fields) must keep it equal to that composition.
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
        self.frozen_mode = "eval"  # "train": frozen encoders follow the model's mode (set_frozen_mode)

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

    def set_frozen_mode(self, mode: str = "eval") -> "SegModel":
        """How frozen encoders behave while the rest trains: ``eval`` (default) keeps them in eval mode, so
        BatchNorm statistics and dropout are frozen with the weights; ``train`` lets them follow the model's mode
        (no gradients, but BatchNorm running statistics update and dropout is active), as the released code,
        which only called ``requires_grad_(False)`` under Lightning."""
        if mode not in ("eval", "train"):
            raise ValueError(f"frozen mode must be 'eval' or 'train', got {mode!r}")
        self.frozen_mode = mode
        self.train(self.training)
        return self

    def train(self, mode: bool = True):  # keep frozen parts in eval mode (unless frozen_mode is "train")
        super().train(mode)
        if getattr(self, "frozen_mode", "eval") == "eval":
            for m in self.frozen_modules():
                m.eval()
        return self

    # ---- encoders and decoder ------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor):
        """Image features: whatever ``decode`` needs from the image (a tensor or a tuple/list of tensors,
        batch first).  A frozen image encoder computes them without autograd."""
        raise NotImplementedError(f"model '{self.name}' does not implement encode_image")

    def encode_text(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None):
        """Text features: whatever ``decode`` needs from the prompts (batch first); ``None`` for a text-free
        model, which is what this default gives."""
        return None

    def decode(self, image_features, text_features) -> torch.Tensor:
        """Logits ``(B, 1, h, w)`` from the features of ``encode_image`` and ``encode_text`` (same batch B)."""
        raise NotImplementedError(f"model '{self.name}' does not implement decode")

    def check_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None) -> None:
        """A text model needs one prompt per image: a clear error instead of a shape error deep inside."""
        if not self.uses_text:
            return
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} needs a text prompt (input_ids, from model.tokenize(texts)); "
                             f"use prompt p0 for an empty prompt")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"got {pixel_values.shape[0]} images but {input_ids.shape[0]} prompts "
                             f"(one image with N prompts: decode_prompts)")

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, 1, h, w)``: ``decode(encode_image(pixel_values), encode_text(input_ids, attention_mask))``."""
        self.check_inputs(pixel_values, input_ids)
        return self.decode(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask))

    # ---- one image, many prompts ------------------------------------------------------
    def expand_image_features(self, image_features, n: int):
        """Image features of batch 1 repeated ``n`` times along the batch (``expand``: views, no copy; read them,
        do not write into them)."""
        b = feature_batch_size(image_features)
        if b != 1:
            raise ValueError(f"expand_image_features needs image features of batch 1, got batch {b}")
        return map_features(lambda t: t.expand(n, *t.shape[1:]), image_features)

    def decode_prompts(self, image_features, text_features) -> torch.Tensor:
        """Logits for image features of batch 1 (or N) with text features of batch N: ``(N, 1, h, w)``.

        The image is encoded once (``encode_image`` on one image) and its features are broadcast to the N
        prompts, so decoding N prompts costs N decodes, not N image encodings.  Equal, within float rounding,
        to ``forward`` on the image repeated N times with the N prompts."""
        n = feature_batch_size(text_features)
        b = feature_batch_size(image_features)
        if n is not None and b != n:
            if b != 1:
                raise ValueError(f"decode_prompts: image features of batch {b} cannot go with {n} prompts "
                                 f"(give one image, or one image per prompt)")
            image_features = self.expand_image_features(image_features, n)
        return self.decode(image_features, text_features)

    # ---- bookkeeping --------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}
