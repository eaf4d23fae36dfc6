"""Where model weights come from: builtin offline models, pointers, committed checkpoints."""

from .builtin import builtin_file, builtin_model_path, builtin_names, is_builtin
from .identity import hub_identity, model_identity
from .resolve import POINTER, resolve_model_path

__all__ = [
    "POINTER", "builtin_file", "builtin_model_path", "builtin_names", "hub_identity", "is_builtin",
    "model_identity", "resolve_model_path",
]
