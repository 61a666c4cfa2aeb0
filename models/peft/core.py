"""What every parameter-efficient method shares: which model family a model is, where its parts are, the base
class of a method, and how a method is put on a model (freezing, eval mode, the PEFT subclass) and taken off.

A method is an ``nn.Module`` (:class:`PeftMethod`) attached to the model as ``model.peft_method``: its own tensors
(adapters, context vectors, prompt tokens) live there, so their state-dict keys all start with ``peft_method.``
(LoRA's live inside the layers it wraps).  It reaches into the frozen model in three ways, chosen so the model's
own files stay untouched:

* forward hooks on modules (an adapter after an attention block, prompt tokens appended to the patch
  embeddings), registered with ``prepend=True`` so they run before any hook transformers installs to record
  hidden states (the recorded states then include what the method changed);
* ``adapt_features(model, image_features, text_features)``: runs at the start of ``decode``, between the
  encoders and the decoder (adapters on the tapped features and the conditional embedding);
* ``encode_text(model, input_ids, attention_mask)``: replaces the model's text encoder pass when the method
  changes the token sequence itself (CoOp) or needs more than the conditional embedding (shallow text adapters).

``apply_peft`` swaps the model's class for a subclass (``Peft<Base>``, made once per base class) that routes
``encode_text``/``decode`` through the method, keeps every frozen part in eval mode in ``train()`` and refuses
``freeze()``.  The model keeps ``forward(pixel_values, input_ids, attention_mask)``, ``tokenize`` and its
state-dict keys (plus the method's).
"""
from __future__ import annotations

from torch import nn

# the model families the methods know, by class name (no import of the families' modules needed)
FAMILIES = {"CLIPSeg": "clipseg", "BiomedCLIPSeg": "biomedclipseg", "CRIS": "cris"}


def model_family(model: nn.Module) -> str | None:
    """'clipseg', 'biomedclipseg' (also biomedclipseg_d) or 'cris'; None for any other model (the CNNs)."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    return None


def refusal(model: nn.Module, method: str, reason: str) -> ValueError:
    """The one-line error for a method that does not apply to a model."""
    return ValueError(f"--peft {method} does not apply to {getattr(model, 'name', type(model).__name__)}: {reason}")


def add_output_hook(module: nn.Module, hook) -> None:
    """Run ``hook(module, args, output)`` after ``module`` and use what it returns as the output.

    ``prepend=True``: before transformers' hidden-state recorders, so recorded states include the change."""
    module.register_forward_hook(hook, prepend=True)


def replace_output(output, new_first):
    """``output`` with its tensor (or the first element of its tuple) replaced by ``new_first``."""
    if isinstance(output, tuple):
        return (new_first, *output[1:])
    return new_first


def first_tensor(output):
    """The tensor of a module output: itself, or the first element of a tuple (attention modules)."""
    return output[0] if isinstance(output, tuple) else output


# ---- where the parts of each family are ------------------------------------------------------------------------------
def decoder_modules(model: nn.Module) -> list[nn.Module]:
    """Everything after the encoders: what ``train_decoder=True`` unfreezes."""
    family = model_family(model)
    if family == "clipseg":
        return [model.hf.decoder]
    if family == "biomedclipseg":
        return [model.decoder]
    if family == "cris":
        return [model.neck, model.decoder, model.proj]
    return []


def clipseg_decoder(model: nn.Module) -> nn.Module:
    """The transformers ``CLIPSegDecoder`` of CLIPSeg and BiomedCLIPSeg(-D)."""
    return model.hf.decoder if model_family(model) == "clipseg" else model.decoder


def vision_blocks(model: nn.Module) -> list[nn.Module]:
    """The ViT's transformer blocks, in order (CLIPSeg, BiomedCLIPSeg)."""
    if model_family(model) == "clipseg":
        return list(model.hf.clip.vision_model.encoder.layers)
    return list(model.visual.trunk.blocks)


def text_blocks(model: nn.Module) -> list[nn.Module]:
    """The text transformer's blocks, in order (CLIP text transformer, PubMedBERT, CRIS's CLIP text tower)."""
    family = model_family(model)
    if family == "clipseg":
        return list(model.hf.clip.text_model.encoder.layers)
    if family == "biomedclipseg":
        return list(model.text.transformer.encoder.layer)
    return list(model.backbone.transformer.resblocks)


def last_tapped_layer(model: nn.Module) -> int:
    """The deepest ViT block whose output the decoder reads (0-based); blocks after it do not affect the logits."""
    return max(model.extract_layers)


# ---- the method base class -------------------------------------------------------------------------------------------
class PeftMethod(nn.Module):
    """A parameter-efficient method attached to a model as ``model.peft_method``.

    ``touches``: the encoders the method changes from inside ({"image": bool, "text": bool}).  An encoder it does
    not touch stays frozen the base class's way (``model.frozen``: computed without autograd, so its features can
    be cached); a touched one runs with autograd so gradients reach the method's tensors, its own weights frozen.
    """

    encodes_text = False  # True: encode_text below replaces the model's text encoder pass

    def __init__(self, touches_image: bool = False, touches_text: bool = False):
        super().__init__()
        self.touches = {"image": bool(touches_image), "text": bool(touches_text)}

    def encode_text(self, model, input_ids, attention_mask=None, *args, **kwargs):
        raise NotImplementedError

    def adapt_features(self, model, image_features, text_features):
        """Features on their way from the encoders to the decoder; unchanged by default."""
        return image_features, text_features

    def trainable_parameters(self, model) -> list[nn.Parameter]:
        """The tensors the method trains (the decoder's come on top with ``train_decoder``)."""
        return list(self.parameters())

    def train_modules(self, model) -> list[nn.Module]:
        """Modules that follow ``model.train()`` (dropout of the method's own layers); the rest stays in eval."""
        return [self]


# ---- the PEFT subclass -----------------------------------------------------------------------------------------------
class PeftSegModel:
    """Mixin placed in front of a model's class by ``apply_peft`` (see the module docstring)."""

    _peft_base: type = object  # the class the model had before apply_peft

    def encode_text(self, input_ids, attention_mask=None, *args, **kwargs):
        if self.peft_method.encodes_text:
            return self.peft_method.encode_text(self, input_ids, attention_mask, *args, **kwargs)
        return super().encode_text(input_ids, attention_mask, *args, **kwargs)

    def decode(self, image_features, text_features, *args, **kwargs):
        image_features, text_features = self.peft_method.adapt_features(self, image_features, text_features)
        return super().decode(image_features, text_features, *args, **kwargs)

    def freeze(self, image: bool = False, text: bool = False):
        raise ValueError(f"{self.name} has --peft {self.peft['method']} applied: what trains is set by apply_peft "
                         f"(train_decoder=True unfreezes the decoder), not by freeze()")

    def train(self, mode: bool = True):
        """Frozen parts in eval mode (BatchNorm statistics, dropout) as the base class keeps a frozen encoder;
        the method's own modules, and the decoder with ``train_decoder``, follow ``mode``.  With
        ``set_frozen_mode("train")`` everything follows ``mode``, as the base class then does."""
        super().train(mode)
        if mode and getattr(self, "frozen_mode", "eval") == "eval":
            for child in self.children():
                child.eval()
            active = self.peft_method.train_modules(self)
            if self.peft.get("train_decoder"):
                active += decoder_modules(self)
            for module in active:
                module.train()
        return self


_PEFT_CLASSES: dict[type, type] = {}


def peft_class(base: type) -> type:
    """``Peft<Base>``: the PEFT subclass of a model class, made once per class."""
    if base not in _PEFT_CLASSES:
        _PEFT_CLASSES[base] = type(f"Peft{base.__name__}", (PeftSegModel, base),
                                   {"__module__": __name__, "_peft_base": base,
                                    "__doc__": f"{base.__name__} with a parameter-efficient method (models.peft)."})
    return _PEFT_CLASSES[base]


def install(model: nn.Module, method: PeftMethod, record: dict) -> nn.Module:
    """Attach ``method`` and freeze everything it does not train (the decoder too unless ``train_decoder``)."""
    ref = next(model.parameters())
    model.peft_method = method.to(device=ref.device, dtype=ref.dtype)
    model.requires_grad_(False)
    for p in method.trainable_parameters(model):
        p.requires_grad_(True)
    if record.get("train_decoder"):
        for m in decoder_modules(model):
            m.requires_grad_(True)
    model.__class__ = peft_class(type(model))
    model.peft = dict(record)
    model.frozen = {"image": not method.touches["image"], "text": not method.touches["text"]}
    model.train(model.training)
    return model


def uninstall(model: nn.Module) -> nn.Module:
    """Take the method off (its hooks must be gone already): the plain class, nothing frozen, no record."""
    del model.peft_method
    model.__class__ = type(model)._peft_base
    del model.peft
    model.requires_grad_(True)
    model.frozen = {"image": False, "text": False}
    model.train(model.training)
    return model
