"""Where model weights come from: builtin offline models, pointers, committed checkpoints."""

from .builtin import builtin_model_path, builtin_names, is_builtin
from .resolve import POINTER, resolve_model_path

__all__ = ["POINTER", "builtin_model_path", "builtin_names", "is_builtin", "resolve_model_path"]
