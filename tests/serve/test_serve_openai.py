"""The official `openai` client against `aipo serve` (transformers backend) on 127.0.0.1:
whole answers, streamed answers, usage, n, /v1/completions and errors in OpenAI's shape."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from aipo_ray.serve.runner import serve_checkpoint, serve_config
from tests.serve.greedy import local_greedy

TOKEN = "openai-client-token-42"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_llama_path):
    config = serve_config(tiny_llama_path, overrides=[
        "serve.backend=hf", "serve.port=0", "serve.rank=false", "serve.cpus_per_replica=0.5",
        "serve.max_tokens_limit=32", "serve.default_max_tokens=8", "serve.max_n=3",
        f"serve.auth_token={TOKEN}",
    ])
    app = serve_checkpoint(tiny_llama_path, blocking=False, config=config)
    yield app
    app.shutdown()


@pytest.fixture(scope="module")
def client(server):
    with OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def test_a_whole_answer_is_the_greedy_answer(client, model, tiny_llama_path):
    r = client.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and len(r.choices) == 1
    assert r.choices[0].message.content == local_greedy(tiny_llama_path, HELLO, 12)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_streamed_answer_arrives_in_chunks_that_join_to_the_whole_answer(client, model):
    whole = client.chat.completions.create(model=model, messages=HELLO, max_tokens=12,
                                           temperature=0)
    chunks = list(client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # the last chunk carries usage and no choice, as OpenAI sends it
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_a_stream_without_include_usage_has_no_usage_chunk(client, model):
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, max_tokens=4,
                                                 temperature=0, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)


def test_n_choices_are_sampled_apart_and_reproducibly(client, model):
    ask = dict(model=model, messages=HELLO, max_tokens=8, temperature=1.0, n=2, seed=7)
    r = client.chat.completions.create(**ask)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1] and texts[0] != texts[1]
    assert [c.message.content for c in client.chat.completions.create(**ask).choices] == texts
    streamed: dict[int, str] = {}
    for chunk in client.chat.completions.create(**ask, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert [streamed[0], streamed[1]] == texts


def test_completions_continue_the_prompt_whole_and_streamed(client, model, tiny_llama_path):
    prompt = "The sky is"
    r = client.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == local_greedy(tiny_llama_path, None, 10, prompt=prompt)
    chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=10,
                                            temperature=0, stream=True))
    assert len([c for c in chunks if c.choices[0].text]) > 1
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def assert_openai_error(err: openai.APIStatusError, status: int, kind: str, param: str | None,
                        code: str) -> None:
    assert err.status_code == status
    body = err.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    assert (body["type"], body["param"], body["code"]) == (kind, param, code)


def test_errors_have_openai_shape(server, client, model):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=model, messages=HELLO, temperature=9)
    assert_openai_error(bad.value, 400, "invalid_request_error", "temperature", "invalid_request")

    with pytest.raises(openai.BadRequestError) as over:  # refused before any chunk is sent
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=33, stream=True)
    assert_openai_error(over.value, 400, "invalid_request_error", "max_tokens",
                        "max_tokens_exceeded")
    assert "limit of 32" in over.value.message

    with pytest.raises(openai.BadRequestError) as many:
        client.completions.create(model=model, prompt="x", n=4)
    assert_openai_error(many.value, 400, "invalid_request_error", "n", "invalid_request")

    stranger = OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as unauthorised:
        stranger.chat.completions.create(model=model, messages=HELLO, stream=True)
    assert_openai_error(unauthorised.value, 401, "authentication_error", None, "invalid_api_key")
