"""Loading θ_t (any URI the config accepts) and its tokenizer, the same way in every process."""

from __future__ import annotations

import torch

from aipo_ray.config import RunConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(config: RunConfig, on_gpu: bool) -> torch.dtype:
    """bf16 on GPU (unless training.mixed_precision says fp32), fp32 on CPU."""
    mode = config.training.mixed_precision
    if mode == "fp32":
        return torch.float32
    if mode == "bf16" or on_gpu:
        return torch.bfloat16
    return torch.float32


def load_tokenizer(config: RunConfig, model_dir: str):
    from transformers import AutoTokenizer

    path = model_dir
    if config.model.tokenizer and config.model.tokenizer != config.model.path:
        from aipo_ray.models import resolve_model_path

        path = resolve_model_path(config.model.tokenizer, config.storage)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(config: RunConfig, model_uri: str, dtype: torch.dtype = torch.float32):
    """(model_dir, tokenizer, causal LM) for `model_uri`, resolved (and verified) in this process."""
    from transformers import AutoModelForCausalLM

    from aipo_ray.models import resolve_model_path

    model_dir = resolve_model_path(model_uri, config.storage)
    tokenizer = load_tokenizer(config, model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=config.model.trust_remote_code
    )
    return model_dir, tokenizer, model


def make_encoder(config: RunConfig, tokenizer):
    from .batching import PairEncoder

    return PairEncoder(tokenizer, config.training.max_prompt_length,
                       config.training.max_response_length, config.model.chat_template)
