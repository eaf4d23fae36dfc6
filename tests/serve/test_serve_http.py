"""`aipo serve` over real HTTP on 127.0.0.1: a committed tiny model, the ranker, limits, auth."""

from __future__ import annotations

import httpx
import pytest

from aipo_ray.serve.runner import serve_checkpoint, serve_config
from tests.report.model_runs import build_model_run
from tests.serve.greedy import local_greedy

TOKEN = "test-serve-token-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_cluster, tiny_llama_path, smollm2_path):
    """models/iter_002 of a run served with a token, small limits and the callable ranker."""
    rd = build_model_run(tmp_path_factory.mktemp("serve"), tiny_llama_path, smollm2_path)
    checkpoint = rd.model_uri(2)
    config = serve_config(checkpoint, overrides=[
        "ranking.backend=callable", "ranking.callable=tests.report.judges:longer_is_better",
        "ranking.cpus_per_replica=0.25", "serve.cpus_per_replica=0.5", "serve.port=0",
        "serve.max_request_bytes=2048", "serve.max_tokens_limit=16", "serve.default_max_tokens=8",
        f"serve.auth_token={TOKEN}", "serve.backend=hf",
    ])
    app = serve_checkpoint(checkpoint, blocking=False, config=config)
    client = httpx.Client(base_url=app.url, timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    yield app, client, checkpoint
    client.close()
    app.shutdown()


def chat(client, **body):
    body.setdefault("messages", [{"role": "user", "content": "Say hello."}])
    return client.post("/v1/chat/completions", json=body)


def test_chat_completion_answers_with_the_committed_model(served):
    _, client, checkpoint = served
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = chat(client, messages=messages, max_tokens=6, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "iter_002"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    # greedy: exactly what transformers produces with the committed weights
    assert choice["message"]["content"] == local_greedy(checkpoint, messages, 6)


def test_default_and_limited_max_tokens(served):
    _, client, _ = served
    r = chat(client, temperature=0)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 8
    r = chat(client, max_tokens=17)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    assert "limit of 16" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    (b'{"messages": [{"role": "user", "content": "hi"}', None),  # truncated JSON
    (b"not json at all", None),
    (b"[1, 2]", None),
    (b'{"model": "x"}', "messages"),
    (b'{"messages": "hello"}', "messages"),
    (b'{"messages": [{"role": "user", "content": 42}]}', "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
])
def test_bad_requests_get_a_400_json_error(served, body, param):
    _, client, _ = served
    r = client.post("/v1/chat/completions", content=body,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    if param is None:
        assert error["code"] == "invalid_json"


def test_too_large_bodies_are_refused_with_413(served):
    _, client, _ = served
    big = {"messages": [{"role": "user", "content": "x" * 4096}]}
    r = chat(client, **big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the server must count while reading
        for _ in range(8):
            yield b" " * 512

    r = client.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 413


def test_bearer_token_is_required(served):
    app, _, _ = served
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(f"{app.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
        assert TOKEN not in r.text
    assert httpx.get(f"{app.url}/v1/models", timeout=60).status_code == 401
    assert httpx.get(f"{app.url}/healthz", timeout=60).json() == {"status": "ok"}


def test_rank_endpoint_scores_with_the_configured_ranker(served):
    _, client, _ = served
    r = client.post("/rank", json={"prompt": "p", "candidates": ["ab", "abcd", "a"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"scores": [2.0, 4.0, 1.0], "best_idx": 1, "worst_idx": 2,
                        "ranking": [1, 0, 2]}
    r = client.post("/rank", json={"prompt": "p", "candidates": ["only one"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "candidates"


def test_models_lists_the_checkpoint(served):
    _, client, _ = served
    assert client.get("/v1/models").json()["data"][0]["id"] == "iter_002"
