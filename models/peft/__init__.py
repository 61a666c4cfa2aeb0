"""Parameter-efficient fine-tuning of the vision-language models: VLSM-Adapter (shallow, dense), LoRA (peft),
CoOp and VPT, as wrappers around a model of the registry (docs/peft.md).

```python
model = create_model("clipseg", weights=...)
apply_peft(model, "adapter-shallow")              # in place; model.peft records what was applied
optimizer = AdamW(p for p in model.parameters() if p.requires_grad)
...
state = peft_state_dict(model)                    # only the tensors the method trains
# later: the same base weights, the same method, the trained tensors
model = create_model("clipseg", weights=...); apply_peft(model, **record); load_peft_state(model, state)
```

After ``apply_peft`` the model still has ``forward(pixel_values, input_ids, attention_mask)``, ``tokenize``,
``encode_image``/``encode_text``/``decode``, and ``parameter_counts()`` counts the trainable subset; ``train()``
keeps every frozen part in eval mode; ``freeze()`` is refused.  A method that does not apply to a model is
refused in one line (``ValueError``).
"""
from __future__ import annotations

from torch import nn

from .adapters import PARTS, build_dense, build_shallow
from .core import install, model_family, refusal, uninstall
from .lora import build_lora, merge_lora_layers
from .prompt_tuning import build_coop, build_vpt

# method -> its options and their defaults (sources: docs/peft.md)
PEFT_METHODS: dict[str, dict] = {
    "adapter-shallow": {"adapter_in": None, "adapter_dim": 512, "train_decoder": False},
    "adapter-dense": {"adapter_in": None, "adapter_dim": 64, "train_decoder": False},
    "lora": {"lora_rank": 8, "lora_alpha": 8, "lora_dropout": 0.0, "lora_targets": None, "train_decoder": False},
    "coop": {"n_ctx": 4, "ctx_init": "a photo of a", "train_decoder": False},
    "vpt": {"vpt_tokens": 4, "vpt_deep": False, "train_decoder": False},
}
BUILDERS = {"adapter-shallow": build_shallow, "adapter-dense": build_dense, "lora": build_lora, "coop": build_coop,
            "vpt": build_vpt}
TEXT_FREE_REASONS = {  # why each method has nothing to work on in a text-free CNN
    "adapter-shallow": "it is a text-free CNN; VLSM-Adapter adapts the encoders of a vision-language model",
    "adapter-dense": "it is a text-free CNN; VLSM-Adapter adapts the encoders of a vision-language model",
    "lora": "it is a text-free CNN without attention layers; LoRA here targets the attention of the VLSMs",
    "coop": "it reads no text; CoOp learns context vectors for the prompt",
    "vpt": "it is a CNN with no token sequence; VPT adds prompt tokens to a vision transformer",
}
__all__ = ["PARTS", "PEFT_METHODS", "apply_peft", "load_peft_state", "merge_lora", "peft_config",
           "peft_state_dict"]


def resolve_options(method: str, options: dict) -> dict:
    """The method's options: its defaults updated with ``options``; an unknown method or option in one line."""
    if method not in PEFT_METHODS:
        raise ValueError(f"unknown --peft method {method!r}; choose one of: {', '.join(PEFT_METHODS)}")
    defaults = PEFT_METHODS[method]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"--peft {method} has no option {', '.join(unknown)}; its options: {', '.join(defaults)}")
    opts = {**defaults, **options}
    if method == "coop":
        opts["_ctx_init_given"] = "ctx_init" in options
    opts["train_decoder"] = bool(opts["train_decoder"])
    return opts


def apply_peft(model: nn.Module, method: str, **options) -> nn.Module:
    """Put ``method`` on ``model`` in place and return it: the method's tensors added and trainable, everything
    else frozen (the decoder too, unless ``train_decoder=True``).  ``model.peft`` = ``{"method": ..., options}``
    with every option resolved: ``apply_peft(fresh_model, **model.peft)`` rebuilds the same structure."""
    opts = resolve_options(method, options)
    if getattr(model, "peft", None):
        raise ValueError(f"{model.name} already has --peft {model.peft['method']} applied")
    if model_family(model) is None:
        raise refusal(model, method, TEXT_FREE_REASONS[method] if not getattr(model, "uses_text", True)
                      else "only CLIPSeg, BiomedCLIPSeg(-D) and CRIS are supported")
    built = BUILDERS[method](model, opts)
    record = {"method": method, **{k: v for k, v in opts.items() if not k.startswith("_")}}
    if method in ("adapter-shallow", "adapter-dense"):
        record["adapter_in"] = list(built.parts)
    if method == "lora" and isinstance(record["lora_targets"], str):
        record["lora_targets"] = [t.strip() for t in record["lora_targets"].split(",") if t.strip()]
    return install(model, built, record)


def peft_config(model: nn.Module) -> dict | None:
    """What was applied, as keyword arguments of :func:`apply_peft` (None for a plain model)."""
    record = getattr(model, "peft", None)
    return dict(record) if record else None


def peft_state_dict(model: nn.Module) -> dict:
    """The tensors the method trains, as in ``state_dict()``: the trainable parameters (the decoder's with
    ``train_decoder``) and the buffers of the modules that own them (a trained decoder's BatchNorm statistics);
    with ``set_frozen_mode("train")`` also every BatchNorm's statistics, which then update in frozen parts too."""
    if not getattr(model, "peft", None):
        raise ValueError(f"{getattr(model, 'name', 'model')} has no --peft method applied")
    keys = set()
    follow = getattr(model, "frozen_mode", "eval") == "train"
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        own = list(module.named_parameters(recurse=False))
        if any(p.requires_grad for _, p in own) or (follow and isinstance(module, nn.modules.batchnorm._BatchNorm)):
            keys.update(prefix + n for n, p in own if p.requires_grad)
            keys.update(prefix + n for n, _ in module.named_buffers(recurse=False))
    return {k: v for k, v in model.state_dict().items() if k in keys}


def load_peft_state(model: nn.Module, state: dict) -> nn.Module:
    """Load ``peft_state_dict`` output into a model with the same method applied (on the same base weights);
    keys that do not fit are refused in one line.  Extra buffers of the model (BatchNorm statistics saved with
    ``frozen_mode="train"``) are loaded too."""
    expected = set(peft_state_dict(model))
    buffers = {k for k, _ in model.named_buffers()}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - buffers)
    if missing or unexpected:
        raise ValueError(f"this PEFT state does not fit {model.name} with {model.peft}: {len(missing)} tensors "
                         f"missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: torch's message runs over many lines
        raise ValueError(f"this PEFT state does not fit {model.name} with {model.peft}: "
                         f"{' '.join(str(e).split())[:300]}") from e
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA into the base weights and return the plain model (in place): its class, state-dict keys and
    trainability as ``create_model`` gives them, so it saves and loads like a fully fine-tuned model."""
    record = getattr(model, "peft", None)
    if not record or record["method"] != "lora":
        what = f"--peft {record['method']}" if record else "no --peft method"
        raise ValueError(f"merge_lora: {getattr(model, 'name', 'model')} has {what}; only LoRA merges into "
                         f"the base weights")
    merge_lora_layers(model)
    return uninstall(model)
