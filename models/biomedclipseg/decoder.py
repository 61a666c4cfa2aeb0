"""The CLIPSeg decoder of BiomedCLIPSeg: a ``CLIPSegDecoder`` sized for the BiomedCLIP encoders, and (for
BiomedCLIPSeg-D) copying the decoder of a pretrained CLIPSeg into it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..clipseg import load_pretrained_clipseg as _load_clipseg
from ..clipseg import reset_decoder_init


def make_decoder_config(vision_hidden: int, patch_size: int, projection_dim: int, extract_layers,
                        reduce_dim: int = 64, n_heads: int = 4, intermediate_size: int = 2048,
                        refined: bool = True, conditional_layer: int = 0):
    """A ``CLIPSegConfig`` whose decoder dimensions match the given encoders."""
    from transformers import CLIPSegConfig
    config = CLIPSegConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": vision_hidden, "patch_size": patch_size, "num_hidden_layers": 1,
                       "num_attention_heads": n_heads, "intermediate_size": intermediate_size},
        projection_dim=projection_dim, extract_layers=list(extract_layers), reduce_dim=reduce_dim,
        decoder_num_attention_heads=n_heads, decoder_intermediate_size=intermediate_size,
        conditional_layer=conditional_layer, use_complex_transposed_convolution=refined)
    config._attn_implementation = "sdpa"  # the decoder is used standalone, outside from_pretrained's dispatch
    return config


def make_decoder(config) -> nn.Module:
    """A randomly initialised ``CLIPSegDecoder`` with PyTorch's default Linear/Conv initialisation
    (see ``models.clipseg.reset_decoder_init`` for why)."""
    from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoder
    return reset_decoder_init(CLIPSegDecoder(config))


def load_pretrained_clipseg(source: str):
    """The pretrained CLIPSeg whose decoder seeds biomedclipseg_d (folder or hub id; clear error offline)."""
    local = Path(source).expanduser()
    return _load_clipseg(str(local) if local.exists() else source, what="pretrained CLIPSeg decoder",
                         how_to_pass="copy that machine's Hugging Face cache entry (~/.cache/huggingface/hub/"
                                     "models--CIDAS--clipseg-rd64-refined, made by hf download without "
                                     "--local-dir) into this machine's cache: biomedclipseg_d reads it from there")


def copy_decoder_weights(target: nn.Module, source: nn.Module) -> dict[str, list[str]]:
    """Copy every same-name, same-shape tensor of ``source`` into ``target``; return what happened."""
    src, dst = source.state_dict(), target.state_dict()
    report = {"copied": [], "shape_mismatch": [], "missing_in_source": [], "unused_in_source": []}
    with torch.no_grad():
        for k, v in dst.items():
            if k not in src:
                report["missing_in_source"].append(k)
            elif src[k].shape != v.shape:
                report["shape_mismatch"].append(f"{k}: ours {tuple(v.shape)} vs pretrained {tuple(src[k].shape)}")
            else:
                v.copy_(src[k].to(v.dtype))
                report["copied"].append(k)
    report["unused_in_source"] = sorted(set(src) - set(dst))
    return report
