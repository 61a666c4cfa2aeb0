"""LoRA (Hu et al., 2021) through Hugging Face ``peft``: ``LoraConfig`` + ``inject_adapter_in_model``.

peft's default initialisation is kept: A Kaiming-uniform, B zeros, so the model's output at step 0 is the base
model's, bit for bit.  Default targets, per family (the layers that reach the decoder):

* CLIPSeg: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` of every text layer and of the vision layers up to the
  last tapped one (later vision layers do not affect the logits; LoRA there would never train).
* BiomedCLIPSeg(-D): the ViT's ``attn.qkv`` and ``attn.proj`` (blocks up to the last tapped one) and PubMedBERT's
  ``attention.self.query``/``key``/``value``.
* CRIS: its ``nn.MultiheadAttention`` modules (peft PR #1324): the 12 of the CLIP text tower and the self- and
  cross-attention of the vision-language decoder.  Its ResNet has no attention layer LoRA could wrap: the dense
  attention pool passes its q/k/v/c projections' weights to ``F.multi_head_attention_forward`` directly, so a LoRA
  layer there would be bypassed; such targets are refused.

``nn.MultiheadAttention`` takes its projection weights as tensors, so peft's LoRA layer for it merges the LoRA
delta into the frozen weights before each call and subtracts it after: ``(W + d) - d`` is not ``W`` in floating
point, and the frozen weights drift a little at every forward.  :class:`ExactLoraMultiheadAttention` calls the
attention with ``W + d`` through ``torch.func.functional_call`` instead and never writes into ``W``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .core import PeftMethod, last_tapped_layer, model_family, refusal, text_blocks

LORA_TYPES = (nn.Linear, nn.MultiheadAttention, nn.Conv2d, nn.Embedding)  # what peft's LoRA wraps here


def _peft_mha_class():
    from peft.tuners.lora.layer import MultiheadAttention
    return MultiheadAttention


_EXACT_MHA: list[type] = []


def exact_mha_class() -> type:
    """``ExactLoraMultiheadAttention``: peft's LoRA ``MultiheadAttention`` whose forward leaves the frozen weights
    untouched (module docstring).  Made at first use, so importing this module does not import peft (seconds)."""
    if _EXACT_MHA:
        return _EXACT_MHA[0]
    base = _peft_mha_class()

    def forward(self, query, *args, **kwargs):
        if self.disable_adapters or self.merged:
            return base.forward(self, query, *args, **kwargs)
        attn = self.get_base_layer()              # nn.MultiheadAttention; its out_proj is a peft lora.Linear
        out_proj = attn.out_proj
        w_in, w_out = attn.in_proj_weight, out_proj.get_base_layer().weight
        for name in self.active_adapters:
            if name in self.lora_A:
                w_in = w_in + self.get_delta_weight(name).to(w_in.dtype)
                w_out = w_out + out_proj.get_delta_weight(name).to(w_out.dtype)
        weights = {"in_proj_weight": w_in, "out_proj.base_layer.weight": w_out}
        return torch.func.functional_call(attn, weights, (query, *args), kwargs, strict=False)

    cls = type("ExactLoraMultiheadAttention", (base,), {
        "__module__": __name__, "forward": forward,
        "__doc__": "LoRA on nn.MultiheadAttention computing with W + BA without writing into W (models.peft.lora)."})
    _EXACT_MHA.append(cls)
    return cls


# ---- targets ---------------------------------------------------------------------------------------------------------
def default_targets(model) -> list[str]:
    """Full module names of the per-family default targets (module docstring)."""
    family = model_family(model)
    if family == "clipseg":
        last = last_tapped_layer(model)
        vision = [f"hf.clip.vision_model.encoder.layers.{i}.self_attn.{p}_proj" for i in range(last + 1)
                  for p in ("q", "k", "v", "out")]
        text = [f"hf.clip.text_model.encoder.layers.{i}.self_attn.{p}_proj" for i in range(len(text_blocks(model)))
                for p in ("q", "k", "v", "out")]
        return vision + text
    if family == "biomedclipseg":
        last = last_tapped_layer(model)
        vision = [f"visual.trunk.blocks.{i}.attn.{p}" for i in range(last + 1) for p in ("qkv", "proj")]
        text = [f"text.transformer.encoder.layer.{i}.attention.self.{p}" for i in range(len(text_blocks(model)))
                for p in ("query", "key", "value")]
        return vision + text
    text = [f"backbone.transformer.resblocks.{i}.attn" for i in range(len(text_blocks(model)))]
    decoder = [f"decoder.layers.{i}.{a}" for i in range(len(model.decoder.layers))
               for a in ("self_attn", "multihead_attn")]
    return text + decoder


def normalise_targets(targets) -> list[str] | None:
    """``lora_targets`` as a list of entries: None (the defaults), a comma-separated string, or a list."""
    if targets is None:
        return None
    entries = targets.split(",") if isinstance(targets, str) else list(targets)
    entries = [e.strip() for e in entries if e and e.strip()]
    return entries or None


def _matches(name: str, entry: str) -> bool:
    """An entry matches a module whose full name is it, ends with ``.entry``, or fully matches it as a regex."""
    if name == entry or name.endswith("." + entry):
        return True
    try:
        return re.fullmatch(entry, name) is not None
    except re.error:
        return False


def match_targets(model, entries: list[str]) -> list[str]:
    """The full names of the LoRA-able modules (Linear, MultiheadAttention, Conv2d, Embedding) the entries match;
    refused in one line when they match none, or match a layer whose LoRA would be bypassed."""
    modules = dict(model.named_modules())
    found = [n for n, m in modules.items() if isinstance(m, LORA_TYPES) and any(_matches(n, e) for e in entries)]
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, LORA_TYPES)},
                       key=lambda s: (s.isdigit(), s))
        shown = ", ".join(n for n in names if not n.isdigit())
        raise ValueError(f"lora_targets {','.join(entries)!r} match no Linear/MultiheadAttention/Conv2d/Embedding "
                         f"module of {model.name}; candidates (name endings): {shown}")
    for n in found:
        parent = modules[n.rpartition(".")[0]] if "." in n else model
        bypassed = isinstance(parent, nn.MultiheadAttention) or any(
            c.__name__ == "AttentionPool2d" for c in type(parent).__mro__)
        if bypassed:
            raise refusal(model, "lora", f"'{n}' is a projection whose weight {type(parent).__name__} passes to "
                                         f"F.multi_head_attention_forward directly, so a LoRA layer there would be "
                                         f"bypassed (target the nn.MultiheadAttention module itself)")
    return found


# ---- the method ------------------------------------------------------------------------------------------------------
class LoraMethod(PeftMethod):
    """LoRA layers injected by peft into the model's own modules; this module only marks what they touch."""

    def __init__(self, targets: list[str], touches_image: bool, touches_text: bool):
        super().__init__(touches_image=touches_image, touches_text=touches_text)
        self.targets = list(targets)

    def trainable_parameters(self, model) -> list[nn.Parameter]:
        return [p for n, p in model.named_parameters() if "lora_" in n]

    def train_modules(self, model) -> list[nn.Module]:
        from peft.tuners.lora import LoraLayer
        return [m.lora_dropout for m in model.modules() if isinstance(m, LoraLayer)]


def build_lora(model, opts: dict) -> LoraMethod:
    from peft import LoraConfig, inject_adapter_in_model
    entries = normalise_targets(opts["lora_targets"])
    targets = match_targets(model, entries) if entries else default_targets(model)
    config = LoraConfig(r=int(opts["lora_rank"]), lora_alpha=opts["lora_alpha"],
                        lora_dropout=float(opts["lora_dropout"]), target_modules=targets, bias="none",
                        init_lora_weights=True)
    config._register_custom_module({nn.MultiheadAttention: exact_mha_class()})
    inside = {part: {id(m) for root in roots for m in root.modules()}
              for part, roots in (("image", model.image_encoder_modules()), ("text", model.text_encoder_modules()))}
    modules = dict(model.named_modules())
    touches = {part: any(id(modules[t]) in ids for t in targets) for part, ids in inside.items()}
    inject_adapter_in_model(config, model)
    if hasattr(model, "peft_config"):  # peft's record of its LoraConfig; ours is model.peft
        del model.peft_config
    return LoraMethod(targets, touches["image"], touches["text"])


def merge_lora_layers(model) -> None:
    """Fold every LoRA layer into the weight it wraps and put the plain layer back (peft's own merge)."""
    from peft.tuners.lora import LoraLayer
    mha = _peft_mha_class()

    def swap(name: str, new: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)

    for name, module in list(model.named_modules()):   # attention first: they own a nested lora.Linear
        if isinstance(module, mha):
            swap(name, module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None))
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            swap(name, module.get_base_layer())
