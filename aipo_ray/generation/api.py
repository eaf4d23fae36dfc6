"""The one entry other components call: `generate(ds, model_uri, cfg, ...)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aipo_ray.config import GenerationConfig, ModelConfig, StorageConfig

from .base import Generator, Sampling
from .registry import GENERATORS

if TYPE_CHECKING:
    import ray.data

def get_generator(backend: str) -> Generator:
    """The registered backend `backend` ('hf', 'vllm', or one registered elsewhere)."""
    return GENERATORS.get(backend)


def generate(
    ds: ray.data.Dataset, model_uri: str, cfg: GenerationConfig, *, n: int | None = None,
    max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
    storage: StorageConfig | None = None, model: ModelConfig | None = None,
) -> ray.data.Dataset:
    """Sample `n` responses per prompt with the model at `model_uri`.

    The prompts are read at once (they are small); the generation itself runs lazily, when the
    returned Dataset is consumed.

    `ds` has columns prompt_id and prompt (the user message; the backend applies the chat
    template). The result has one row per candidate: prompt_id, prompt, candidate_idx
    (0..n-1), response, num_tokens (up to, not including, the first EOS) and finish_reason
    ('stop' when EOS was produced, else 'length'). Arguments left None come from `cfg`;
    temperature 0 is greedy decoding. `cfg.backend` 'auto' runs vllm when it is installed. `model_uri` is anything `resolve_model_path` accepts.

    `model` (the run's `model` section) says how θ_t is read: its tokenizer, chat template,
    trust_remote_code and dtype (`generation.dtype` wins over `model.dtype` when set). None
    reads `model_uri` as it is.

    With the vllm backend and `cfg.share_engine`, the engine stays up after the call, for the
    next call with the same model and settings; `release_engines()` gives its CPUs/GPUs back
    (the pipeline runner does so before stages that need them; it also runs at exit).
    """
    sampling = Sampling.resolve(cfg, n=n, max_tokens=max_tokens, temperature=temperature,
                                top_p=top_p)
    return get_generator(cfg.resolved_backend())(ds, model_uri, cfg, sampling, storage, model)
