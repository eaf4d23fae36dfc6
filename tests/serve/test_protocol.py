"""The serve contract without a server: parsing, limits, auth, stop strings, checkpoint refusal."""

from __future__ import annotations

import json
import shutil

import pytest

from aipo_ray.config import ServeConfig
from aipo_ray.serve.backends import truncate_at_stop
from aipo_ray.serve.protocol import (
    TOKEN_ENV,
    ApiError,
    check_auth,
    check_size,
    parse_chat,
    parse_completion,
    parse_rank,
    token_digest,
)

CFG = ServeConfig(max_tokens_limit=64, default_max_tokens=16, max_messages=3, max_rank_candidates=4)


def error_of(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


def body(**kw) -> bytes:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return json.dumps(kw).encode()


def test_parse_chat_accepts_openai_requests_and_fills_the_default_budget():
    req, budget = parse_chat(body(temperature=0, stop="\n", user="ignored-extra-field"), CFG)
    assert budget == 16 and req.temperature == 0.0 and req.stop_list == ["\n"]
    _, budget = parse_chat(body(max_completion_tokens=64), CFG)
    assert budget == 64
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    req, _ = parse_chat(body(messages=[{"role": "user", "content": parts}]), CFG)
    assert req.messages[0].content == "ab"


def test_parse_chat_names_the_bad_field():
    assert error_of(parse_chat, b"{", CFG).code == "invalid_json"
    assert error_of(parse_chat, b"", CFG).message.startswith("request body is empty")
    assert error_of(parse_chat, b"\xff\xfe", CFG).code == "invalid_json"
    assert error_of(parse_chat, body(max_tokens=65), CFG).param == "max_tokens"
    assert error_of(parse_chat, body(max_completion_tokens=65), CFG).param == "max_completion_tokens"
    assert error_of(parse_chat, body(max_tokens=True), CFG).param == "max_tokens"
    assert error_of(parse_chat, body(max_tokens=0), CFG).param == "max_tokens"
    assert error_of(parse_chat, body(n=9), CFG).message == "n: 9 exceeds this server's limit of 8"
    assert error_of(parse_chat, body(stream="yes"), CFG).param == "stream"
    no_stream = error_of(parse_chat, body(stream_options={"include_usage": True}), CFG)
    assert no_stream.param == "stream_options"
    many = [{"role": "user", "content": "x"}] * 4
    assert error_of(parse_chat, body(messages=many), CFG).param == "messages"
    bad_role = [{"role": "tool", "content": "x"}]
    assert error_of(parse_chat, body(messages=bad_role), CFG).param == "messages.0.role"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]
    assert "text content parts" in error_of(parse_chat, body(messages=image), CFG).message


def test_parse_chat_takes_stream_n_and_keeps_fields_it_does_not_know_for_vllm():
    req, _ = parse_chat(body(stream=True, stream_options={"include_usage": True}, n=8,
                             logprobs=True), CFG)
    assert req.stream and req.include_usage and req.n == 8
    assert req.model_dump(exclude_unset=True)["logprobs"] is True


def test_parse_completion_reads_a_prompt_within_the_limits():
    req, budget = parse_completion(b'{"prompt": "The sky is", "stream": true}', CFG)
    assert (req.prompt, req.stream, budget) == ("The sky is", True, 16)
    assert error_of(parse_completion, b'{"prompt": ["a"]}', CFG).param == "prompt"
    assert error_of(parse_completion, b'{"max_tokens": 2}', CFG).message == \
        "prompt: missing required field 'prompt'"
    assert error_of(parse_completion, b'{"prompt": "x", "max_tokens": 65}', CFG).code == \
        "max_tokens_exceeded"


def test_parse_rank_checks_candidates():
    assert parse_rank(b'{"prompt": "p", "candidates": ["a", "b"]}', CFG).candidates == ["a", "b"]
    assert error_of(parse_rank, b'{"prompt": "p", "candidates": ["a"]}', CFG).param == "candidates"
    five = json.dumps({"prompt": "p", "candidates": list("abcde")}).encode()
    assert "limit of 4" in error_of(parse_rank, five, CFG).message
    assert error_of(parse_rank, b'{"candidates": ["a", "b"]}', CFG).param == "prompt"


def test_check_size_refuses_declared_oversized_bodies():
    check_size(None, 10)
    check_size("10", 10)
    assert error_of(check_size, "11", 10).status == 413
    assert error_of(check_size, "lots", 10).status == 400


def test_auth_is_off_without_a_token_and_checks_bearer_with_one(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token_digest(ServeConfig()) is None
    check_auth(None, None)  # open server
    digest = token_digest(ServeConfig(auth_token="s3cret"))
    check_auth("Bearer s3cret", digest)
    check_auth("bearer s3cret", digest)
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Token s3cret", "s3cret"):
        err = error_of(check_auth, header, digest)
        assert err.status == 401 and "s3cret" not in err.message
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    check_auth("Bearer from-env", token_digest(ServeConfig()))
    # the configured token wins over the environment
    assert error_of(check_auth, "Bearer from-env", token_digest(ServeConfig(auth_token="cfg"))).status == 401


def test_the_config_never_prints_the_token():
    cfg = ServeConfig(auth_token="do-not-print")
    assert "do-not-print" not in repr(cfg) and "do-not-print" not in cfg.model_dump_json()


def test_truncate_at_stop_cuts_before_the_earliest_stop():
    assert truncate_at_stop("one. two! three", [".", "!"]) == ("one", True)
    assert truncate_at_stop("no stops here", ["###"]) == ("no stops here", False)
    assert truncate_at_stop("abc", []) == ("abc", False)


def test_serve_refuses_an_uncommitted_checkpoint_before_starting(tmp_path, tiny_llama_path):
    from aipo_ray.serve.runner import serve_checkpoint
    from aipo_ray.storage.checkpoint import COMMITTED, CheckpointError, upload_checkpoint

    uri = str(tmp_path / "models" / "iter_001")
    upload_checkpoint(tiny_llama_path, uri)
    (tmp_path / "models" / "iter_001" / COMMITTED).unlink()  # as if the upload died before it
    with pytest.raises(CheckpointError, match="never committed"):
        serve_checkpoint(uri, blocking=False)
    shutil.rmtree(tmp_path / "models")


def test_serve_config_comes_from_the_run_holding_the_checkpoint(tmp_path):
    from aipo_ray.config import RunConfig
    from aipo_ray.serve.runner import serve_config
    from aipo_ray.storage import RunDir

    cfg = RunConfig.model_validate({
        "model": {"path": "builtin:smollm2-135m-instruct"},
        "ranking": {"backend": "callable", "callable": "tests.report.judges:longer_is_better"},
        "serve": {"max_tokens_limit": 99, "default_max_tokens": 9},
    })
    rd = RunDir(str(tmp_path / "run"))
    rd.write_json("run.json", {"config": cfg.to_public_dict()})
    served = serve_config(rd.model_uri(2), overrides=["serve.port=0"])
    assert served.model.path == rd.model_uri(2)
    assert served.ranking.callable == "tests.report.judges:longer_is_better"
    assert (served.serve.max_tokens_limit, served.serve.port) == (99, 0)
    # outside a run: defaults, plus the overrides
    alone = serve_config(str(tmp_path / "some-model-dir"), overrides=["serve.port=0"])
    assert alone.ranking.backend == "pairrm" and alone.serve.port == 0
