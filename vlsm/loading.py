"""The one way to get a model for evaluation without training: a trained run (``--checkpoint``) or a model
with weights (``--model/--weights``).  ``evaluate.py``, ``zeroshot.py``, ``predict.py``, ``text_report.py``,
``vlsm.figures``, the study's zero-shot cells and the app all come through here, so every caller gets the same
refusals (CRIS without its checkpoint, both or neither of ``--checkpoint``/``--model``) and the same threshold
rule (``--threshold``, else the run's, else the model's).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from models import create_model, model_from_checkpoint, resolve_weights
from util.checkpoint import resolve_checkpoint

CRIS_NEEDS_CHECKPOINT = (
    "zero-shot CRIS needs the CRIS weights: without --cris-checkpoint only its CLIP RN50 backbone is pretrained and "
    "the neck, decoder and projector are random. Pass --cris-checkpoint /path/to/cris_best.pth (the "
    "RefCOCO-trained checkpoint of the original CRIS code, DerrickWang005/CRIS.pytorch, as the paper used; "
    "docs/cris.md), or --allow-random-decoder to score the random-decoder model as a floor")


@dataclass
class LoadedModel:
    """A model ready to score, with where it came from."""
    model: object
    threshold: object                 # --threshold if given, else the run's, else the model's ("auto" passes)
    run_dir: str | None = None        # the run folder (trained runs only)
    path: str | None = None           # the checkpoint file read (trained runs only)
    ckpt: dict = field(default_factory=dict)
    weights: str | None = None        # pretrained models: what was loaded (None = random init)
    random_decoder: bool = False      # CRIS without its checkpoint (scored only with allow_random_decoder)

    @property
    def args(self) -> dict:
        """The training options the run was started with ({} for a pretrained model)."""
        return self.ckpt.get("args", {})

    def describe(self) -> dict:
        """What a results file records about the model."""
        if self.run_dir or self.path:
            return {"checkpoint": self.path, "run_dir": self.run_dir}
        return {"model": getattr(self.model, "name", None), "weights": self.weights, "zeroshot": True,
                "random_decoder": self.random_decoder}


def refusal(name: str, cris_checkpoint: str | None = None, allow_random_decoder: bool = False) -> str | None:
    """Why a model may not be scored without training (``None`` when it may): CRIS without its checkpoint
    would score a random decoder.  The study checks its zero-shot cells with this before running anything."""
    if name == "cris" and not cris_checkpoint and not allow_random_decoder:
        return CRIS_NEEDS_CHECKPOINT
    return None


def load_trained(checkpoint: str, output_dir: str = "runs", device="cpu", threshold=None) -> LoadedModel:
    """A trained run: a run folder (its best.pth), a .pth/.safetensors file, or ``last``."""
    path, run_dir = resolve_checkpoint(checkpoint, output_dir)
    model, ckpt = model_from_checkpoint(path, device)
    if threshold is None:
        threshold = ckpt.get("threshold", model.default_threshold)
    return LoadedModel(model, threshold, run_dir, path, ckpt)


def load_pretrained(name: str, weights: str | None = "auto", size: str = "base", device="cpu", threshold=None,
                    cris_checkpoint: str | None = None, allow_random_decoder: bool = False,
                    input_size: int | None = None) -> LoadedModel:
    """A registered model with pretrained (or no) weights.  CRIS without ``cris_checkpoint`` is refused unless
    ``allow_random_decoder``: only its backbone would be pretrained."""
    random_decoder = name == "cris" and not cris_checkpoint
    why = refusal(name, cris_checkpoint, allow_random_decoder)
    if why:
        raise ValueError(why)
    resolved = resolve_weights(name, weights, size)
    cfg = {k: v for k, v in (("input_size", input_size), ("cris_checkpoint", cris_checkpoint)) if v}
    model = create_model(name, weights=resolved, size=size, **cfg).to(device)
    return LoadedModel(model, model.default_threshold if threshold is None else threshold, weights=resolved,
                       random_decoder=random_decoder)


def load_for_eval(args, device) -> LoadedModel:
    """From the options of :func:`vlsm.cli.model_options`: ``--checkpoint`` or ``--model`` (exactly one)."""
    checkpoint, name = getattr(args, "checkpoint", None), getattr(args, "model", None)
    if checkpoint and name:
        raise ValueError("give either --checkpoint (a trained run) or --model/--weights, not both")
    if checkpoint:
        return load_trained(checkpoint, args.output_dir, device, args.threshold)
    if not name:
        raise ValueError("give --checkpoint RUN (a trained run), or --model NAME [--weights W] for a model "
                         "without a run folder")
    return load_pretrained(name, args.weights, args.size, device, args.threshold,
                           cris_checkpoint=args.cris_checkpoint, allow_random_decoder=args.allow_random_decoder,
                           input_size=getattr(args, "input_size", None))
