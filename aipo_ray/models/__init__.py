"""Where model weights come from: builtin offline models, pointers, committed checkpoints."""

from .builtin import builtin_file, builtin_model_path, builtin_names, is_builtin
from .identity import hub_identity, model_identity
from .loading import (
    dtype_name,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    tokenizer_path,
    training_dtype,
)
from .resolve import POINTER, resolve_model_path

__all__ = [
    "POINTER", "builtin_file", "builtin_model_path", "builtin_names", "dtype_name", "hub_identity",
    "is_builtin", "load_causal_lm", "load_tokenizer", "model_identity", "resolve_dtype",
    "resolve_model_path", "tokenizer_path", "training_dtype",
]
