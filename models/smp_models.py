"""CNN baselines from segmentation-models-pytorch: UNet, UNet++ and DeepLabV3+ (text ignored).

``size="base"``: the paper's ResNet-50 encoder with smp's default decoders, input 352.
``size="tiny"``: a ResNet-18 encoder cut after 3 stages with narrow decoders, input 128, for
CPU tests and demos.  Images are normalised with ImageNet statistics.

``class_names=(...)`` (``train.py --multiclass``): one output channel per target class of a multi-target
dataset (CAMUS structures, CheXlocalize pathologies), as the paper's code trained its CNNs with
``classes=N``.  Without ``target_index`` the model returns every channel ``(B, N, S, S)`` (training: all of
an image's masks at once); given each record's ``target_index`` (a batch field, ``batch_fields``) it returns
that record's channel ``(B, 1, S, S)``, so the loops score it per record like any binary model.

weights
  None            random initialisation (no download).
  "imagenet"      smp's ImageNet ResNet weights (``smp-hub/<encoder>.imagenet``) from the local
                  Hugging Face cache, or torchvision's ``resnet50-*.pth`` from the torch hub cache;
                  downloaded only when online and ``HF_HUB_OFFLINE`` is not set.
  "/path/file"    a ResNet state dict (torchvision ``.pth``/``.pt`` or ``.safetensors``; keys may carry a
                  ``module.``/``encoder.`` prefix; the ``fc`` classifier is dropped) loaded into the encoder.
"""
from __future__ import annotations

import glob
import logging
import os

import torch
from torch import nn

from util.checkpoint import read_state_dict

from .base import IMAGENET_MEAN, IMAGENET_STD, SegModel
from .hub import download_command, hub_file

logger = logging.getLogger(__name__)


SIZES = {
    "base": {"encoder_name": "resnet50", "encoder_depth": 5, "input_size": 352, "decoder": {}},
    "tiny": {"encoder_name": "resnet18", "encoder_depth": 3, "input_size": 128,
             "decoder": {"unet": {"decoder_channels": (32, 16, 8)},
                         "unetplusplus": {"decoder_channels": (32, 16, 8)},
                         "deeplabv3plus": {"decoder_channels": 32, "decoder_atrous_rates": (2, 4, 6)}}},
}
ARCHS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "deeplabv3plus": "DeepLabV3Plus"}


class SMPSegModel(SegModel):
    """An smp model as a SegModel: ``forward(pixel_values, ...)`` ignores any text inputs."""

    uses_text = False
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD

    def __init__(self, net: nn.Module, input_size: int, class_names: tuple | None = None):
        super().__init__()
        self.net = net
        self.input_size = int(input_size)
        self.class_names = tuple(class_names) if class_names else None
        # util.runtime.forward_batch passes these batch fields to forward (the record's class channel)
        self.batch_fields = ("target_index",) if self.class_names else ()

    def image_encoder_modules(self) -> list[nn.Module]:
        return [self.net.encoder]

    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The smp encoder's features: the input itself, then one map per stage (strides 1, 2, 4, ...)."""
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            self.net.check_input_shape(pixel_values)  # sides divisible by the output stride, as smp's forward
        return self.net.encoder(pixel_values)

    def decode(self, image_features: list[torch.Tensor], text_features=None) -> torch.Tensor:
        """smp's decoder and segmentation head -> logits (B, classes, S, S); the text features (None) are ignored."""
        return self.net.segmentation_head(self.net.decoder(image_features))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, target_index: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``decode(encode_image(pixel_values), None)`` (what smp's own forward computes); with ``target_index``
        each record's own class channel (B, 1, S, S)."""
        logits = self.decode(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask))
        if target_index is None:
            return logits
        idx = torch.as_tensor(target_index, device=logits.device).long().view(-1, 1, 1, 1)
        return logits.gather(1, idx.expand(-1, 1, *logits.shape[-2:]))  # each record's own class channel


def _prune_unused_stages(encoder: nn.Module, depth: int) -> None:
    """smp keeps ResNet stages beyond ``encoder_depth`` although forward never runs them; replace them
    with ``Identity`` so parameter counts and optimisers see only the used encoder."""
    pruned = [f"layer{i}" for i in range(max(depth, 1), 5) if i >= 3 and hasattr(encoder, f"layer{i}")]
    for name in pruned:
        setattr(encoder, name, nn.Identity())
    encoder.pruned_stages = tuple(pruned)


def load_encoder_file(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a ResNet state-dict file (torchvision ``.pth``, smp ``.safetensors``, or a checkpoint holding one under
    ``state_dict``/``model``) into an smp ResNet encoder: ``module.``/``encoder.``/``net.encoder.`` prefixes and
    the ``fc`` classifier are dropped; anything else that does not match is a clear error."""
    state = read_state_dict(str(path), "ResNet weights", strip_prefixes=("module.", "net.encoder.", "encoder."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    pruned = tuple(f"{n}." for n in getattr(encoder, "pruned_stages", ()))
    state = {k: v for k, v in state.items() if not (pruned and k.startswith(pruned))}
    unexpected = [k for k in state if k not in own]
    bad = [f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
           for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{path} is not a state dict for this ResNet encoder: {len(missing)} missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                         f"{len(bad)} shape mismatches (e.g. {bad[:2]}). Supply torchvision's "
                         f"resnet50-*.pth or smp-hub/resnet50.imagenet's model.safetensors.")
    encoder.load_state_dict(state, strict=False)
    logger.info("loaded %d encoder tensors from %s", len(state), path)


def find_imagenet_weights(encoder_name: str) -> str:
    """ImageNet weights for ``encoder_name``: torchvision's file in the torch hub cache, else smp's
    ``model.safetensors`` from the Hugging Face cache (downloaded only when online)."""
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[encoder_name]["pretrained_settings"]["imagenet"]
    repo, rev = settings["repo_id"], settings["revision"]
    hub_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    hits = sorted(glob.glob(os.path.join(hub_dir, f"{encoder_name}-*.pth")))
    if hits:  # torchvision's download, already on disk
        return hits[0]
    fetch = download_command(repo, f"{encoder_name}-imagenet", "model.safetensors", revision=rev)
    return hub_file(repo, "model.safetensors", f"ImageNet weights for {encoder_name}", revision=rev, hint=(
        f"Supply the file yourself: on a connected machine run `{fetch}`, copy the folder here and pass "
        f"--weights /path/to/{encoder_name}-imagenet/model.safetensors; or pass torchvision's {encoder_name}-*.pth "
        f"(or put it in {hub_dir}/); or use --weights none for random initialisation."))


def _build(arch: str, weights: str | None, size: str, input_size: int | None, class_names=None,
           **cfg) -> SMPSegModel:
    import segmentation_models_pytorch as smp

    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    sc = SIZES[size]
    classes = len(class_names) if class_names else 1
    kwargs = dict(encoder_name=sc["encoder_name"], encoder_depth=sc["encoder_depth"], encoder_weights=None,
                  in_channels=3, classes=classes, activation=None, **sc["decoder"].get(arch, {}))
    kwargs.update(cfg)  # e.g. encoder_name="resnet34", decoder_channels=...
    net = getattr(smp, ARCHS[arch])(**kwargs)
    _prune_unused_stages(net.encoder, kwargs["encoder_depth"])
    if weights is not None:
        if weights == "imagenet":
            path = find_imagenet_weights(kwargs["encoder_name"])
        elif os.path.isfile(weights):
            path = weights
        else:
            raise FileNotFoundError(f"{arch} weights '{weights}': give 'imagenet', a ResNet state-dict file, "
                                    f"or none")
        load_encoder_file(net.encoder, path)
    return SMPSegModel(net, input_size or sc["input_size"], class_names)


def build_unet(weights: str | None = None, size: str = "base", input_size: int | None = None, **cfg) -> SMPSegModel:
    """UNet (smp), ResNet-50 encoder (ResNet-18, 3 stages, for size='tiny')."""
    return _build("unet", weights, size, input_size, **cfg)


def build_unetplusplus(weights: str | None = None, size: str = "base", input_size: int | None = None,
                       **cfg) -> SMPSegModel:
    """UNet++ (smp), ResNet-50 encoder (ResNet-18, 3 stages, for size='tiny')."""
    return _build("unetplusplus", weights, size, input_size, **cfg)


def build_deeplabv3plus(weights: str | None = None, size: str = "base", input_size: int | None = None,
                        **cfg) -> SMPSegModel:
    """DeepLabV3+ (smp), ResNet-50 encoder (ResNet-18, 3 stages, for size='tiny')."""
    return _build("deeplabv3plus", weights, size, input_size, **cfg)
