"""Loading θ_t (any URI the config accepts) and its tokenizer for training and the reference.

A thin layer over `aipo_ray.models.loading`, which every stage that reads θ_t shares.
"""

from __future__ import annotations

import torch

from aipo_ray.config import RunConfig
from aipo_ray.models import load_causal_lm, load_tokenizer, resolve_model_path, training_dtype


def compute_dtype(config: RunConfig, on_gpu: bool) -> torch.dtype:
    """training.mixed_precision when set, else model.dtype, else bf16 on GPU and fp32 on CPU."""
    return training_dtype(config.model, config.training.mixed_precision, on_gpu)


def load_policy(config: RunConfig, model_uri: str, dtype: torch.dtype = torch.float32):
    """(model_dir, tokenizer, causal LM) for `model_uri`, resolved (and verified) in this process.

    Training passes fp32 (its master weights; `compute_dtype` is FSDP's compute dtype), the
    reference scorer the compute dtype itself.
    """
    model_dir = resolve_model_path(model_uri, config.storage)
    tokenizer = load_tokenizer(config.model, model_dir, config.storage)
    return model_dir, tokenizer, load_causal_lm(config.model, model_dir, dtype)


def make_encoder(config: RunConfig, tokenizer):
    from .batching import PairEncoder

    return PairEncoder(tokenizer, config.training.max_prompt_length,
                       config.training.max_response_length, config.model.chat_template)
