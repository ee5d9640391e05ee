"""Model sources and the built-in reference models."""
from edgevit.models.builtin import BUILTINS
from edgevit.models.sources import ModelInfo, load_model, read_checkpoint

__all__ = ["BUILTINS", "ModelInfo", "load_model", "read_checkpoint"]
