"""Model zoo: ``from models import create_model``.  Run ``python -m models`` for a parameter table."""
from .base import SegModel
from .registry import (
                       MODEL_SPECS,
                       ModelSpec,
                       create_model,
                       get_preset,
                       get_spec,
                       list_models,
                       model_from_checkpoint,
                       resolve_weights,
)

__all__ = ["SegModel", "MODEL_SPECS", "ModelSpec", "create_model", "get_preset", "get_spec", "list_models",
           "model_from_checkpoint", "resolve_weights"]
