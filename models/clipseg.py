"""CLIPSeg through transformers' ``CLIPSegForImageSegmentation``.

We call the parts ourselves instead of ``CLIPSegForImageSegmentation.forward``:
that forward wraps both CLIP encoders in ``torch.no_grad()``, which silently
freezes them (one of the paper code's defects).  Here gradients flow into the
encoders unless they are frozen on purpose with ``freeze()``.

Layer convention (same as CLIPSeg and transformers): ``extract_layers`` are
0-based indices of vision transformer blocks; the activation of block ``i`` is
``hidden_states[i + 1]`` because ``hidden_states[0]`` is the embedding output.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, SegModel
from .hub import download_command, offline
from .registry import CLIPSEG_HUB_ID
from .text import ClipTokenizer


def clipseg_config(size: str = "base", input_size: int | None = None):
    """The architecture of ``CIDAS/clipseg-rd64-refined`` (base) or a small random one (tiny)."""
    from transformers import CLIPSegConfig
    if size == "base":
        return CLIPSegConfig(
            text_config={"eos_token_id": 49407, "bos_token_id": 49406, "pad_token_id": 1},
            vision_config={"patch_size": 16, "image_size": 224},
            projection_dim=512, extract_layers=[3, 6, 9], reduce_dim=64,
            use_complex_transposed_convolution=True)
    if size == "tiny":
        return CLIPSegConfig(
            text_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "intermediate_size": 128, "vocab_size": 49408, "max_position_embeddings": 77,
                         "eos_token_id": 49407, "bos_token_id": 49406, "pad_token_id": 1},
            vision_config={"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                           "intermediate_size": 128, "image_size": input_size or 96, "patch_size": 8},
            projection_dim=64, extract_layers=[1, 2, 3], reduce_dim=32, decoder_num_attention_heads=4,
            decoder_intermediate_size=64, use_complex_transposed_convolution=True)
    raise ValueError(f"unknown CLIPSeg size '{size}'; use 'base' or 'tiny'")


def reset_decoder_init(decoder: nn.Module) -> nn.Module:
    """Give a random CLIPSeg decoder PyTorch's default Linear/Conv initialisation, as the original CLIPSeg had.

    transformers' ``post_init`` draws every Linear/Conv weight of a CLIPSeg decoder from
    N(0, ``initializer_factor`` = 1.0) (CLIPSegConfig has no ``initializer_range``): logits start with a
    standard deviation in the tens and a decoder trained from scratch barely learns.  LayerNorms keep 1/0.
    """
    for module in decoder.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            module.reset_parameters()
    return decoder


def load_pretrained_clipseg(weights: str, what: str = "CLIPSeg weights", how_to_pass: str | None = None):
    """``CLIPSegForImageSegmentation`` from a local ``save_pretrained`` folder or a hub id (local cache first).

    Offline and not cached: ``FileNotFoundError`` saying what to download and how to pass it (``how_to_pass``,
    default ``--weights /path/to/<repo name>``).
    """
    from transformers import CLIPSegForImageSegmentation
    local = os.path.isdir(weights)
    if not local and (weights.startswith((".", "/", "~")) or os.path.exists(weights)):
        raise FileNotFoundError(f"{what} '{weights}' is not a folder saved with save_pretrained "
                                f"(it needs config.json and model.safetensors)")
    try:
        try:  # the local folder or the Hugging Face cache first: no network round trips
            return CLIPSegForImageSegmentation.from_pretrained(weights, local_files_only=True)
        except (OSError, ValueError):
            if local or offline():
                raise
        return CLIPSegForImageSegmentation.from_pretrained(weights)
    except (OSError, ValueError) as e:
        repo = weights if not local and weights.count("/") == 1 else CLIPSEG_HUB_ID
        local_dir = repo.split("/")[-1]
        raise FileNotFoundError(
            f"could not load {what} '{weights}': {type(e).__name__}: {str(e).splitlines()[0]}\n"
            f"If this machine is offline, download them elsewhere (`{download_command(repo, local_dir)}`), then "
            f"{how_to_pass or f'copy the folder here and pass --weights /path/to/{local_dir}'}; "
            f"or use random initialisation (--weights none).") from e


class CLIPSeg(SegModel):
    name = "clipseg"
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD

    def __init__(self, hf_model, input_size: int = 352):
        super().__init__()
        self.hf = hf_model
        self.input_size = int(input_size)
        self.extract_layers = list(hf_model.config.extract_layers)
        text_cfg = hf_model.config.text_config
        self.tokenizer = ClipTokenizer(context_length=text_cfg.max_position_embeddings, pad_id=0)

    def image_encoder_modules(self) -> list[nn.Module]:
        return [self.hf.clip.vision_model, self.hf.clip.visual_projection]

    def text_encoder_modules(self) -> list[nn.Module]:
        return [self.hf.clip.text_model, self.hf.clip.text_projection]

    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The tapped activations: ``hidden_states[i + 1]`` for each ``i`` in ``extract_layers``, [B, 1 + N, D]
        each (the CLS token and the patch tokens; the decoder needs nothing else from the image)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen["image"]):
            out = self.hf.clip.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                            interpolate_pos_encoding=True, return_dict=True)
        return [out.hidden_states[i + 1] for i in self.extract_layers]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The conditional embedding: CLIP's projected text embedding (pooled EOT token), [B, projection_dim]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen["text"]):
            out = self.hf.clip.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            return self.hf.clip.text_projection(out.pooler_output)

    def decode(self, image_features: list[torch.Tensor], text_features: torch.Tensor) -> torch.Tensor:
        """The CLIPSeg decoder: tapped activations + conditional embedding -> logits (B, 1, h, w)."""
        logits = self.hf.decoder(image_features, text_features).logits
        return logits.reshape(text_features.shape[0], 1, logits.shape[-2], logits.shape[-1])


def build_clipseg(weights: str | None = None, size: str = "base", input_size: int | None = None,
                  config: dict | None = None, **cfg) -> CLIPSeg:
    """``weights``: None (random init of ``size``, or of ``config``, a CLIPSegConfig dict), a hub id such as
    ``CIDAS/clipseg-rd64-refined``, or a local folder."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
    if cfg:
        raise TypeError(f"unknown CLIPSeg options: {', '.join(cfg)}")
    if weights:
        hf = load_pretrained_clipseg(weights)
        native = hf.config.vision_config.image_size  # CLIPSeg runs its 224-px CLIP at 352 px
        model = CLIPSeg(hf, input_size=input_size or (352 if native == 224 else native))
    else:
        hf_config = CLIPSegConfig.from_dict(config) if config else clipseg_config(size, input_size)
        hf = CLIPSegForImageSegmentation(hf_config)
        reset_decoder_init(hf.decoder)
        model = CLIPSeg(hf, input_size=input_size or (352 if size == "base" else 96))
    # checkpoints rebuild exactly this architecture, whatever folder the weights came from
    model.extra_build_args = {"config": hf.config.to_dict(), "input_size": model.input_size}
    return model
