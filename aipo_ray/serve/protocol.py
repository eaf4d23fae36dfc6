"""The HTTP contract of `aipo serve`, with no Ray in it: request parsing, limits, auth, errors.

Bad requests get a 4xx with OpenAI's error shape, `{"error": {"message", "type", "param",
"code"}}`, so OpenAI clients surface the message. The bearer token is never held in the clear:
the server keeps its sha256 and compares digests with `hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError

from aipo_ray.config import ServeConfig

TOKEN_ENV = "AIPO_SERVE_TOKEN"


class ApiError(Exception):
    """An HTTP error with OpenAI's body shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str = "invalid_request", kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class _Request(BaseModel):
    # Strict: "max_tokens": "10" or true is a client bug worth a 400, not a silent cast.
    # Unknown fields are ignored, as OpenAI clients send many (user, logprobs, ...).
    model_config = ConfigDict(strict=True, extra="ignore")


def _join_text_parts(value: Any) -> Any:
    """OpenAI's list-of-parts content: only text parts, joined into one string."""
    if not isinstance(value, list):
        return value
    texts = []
    for part in value:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                part.get("text"), str):
            raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
        texts.append(part["text"])
    return "".join(texts)


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: Annotated[StrictStr, BeforeValidator(_join_text_parts)]


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """What chat and text completions share. Unknown fields are kept (extra="allow") and
    forwarded to a vLLM backend, which understands most of OpenAI's surface (logprobs, ...);
    the transformers backend ignores them."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: StrictStr | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: int | None = None

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """`/v1/completions`: one prompt, continued as plain text (no chat template)."""

    prompt: StrictStr


class RankRequest(_Request):
    prompt: StrictStr
    candidates: list[StrictStr] = Field(min_length=2)


def decode_json(body: bytes) -> dict[str, Any]:
    """A JSON object from the body, or a 400 saying where the JSON broke."""
    if not body.strip():
        raise ApiError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e.msg} (line {e.lineno}, "
                            f"column {e.colno})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    return data


def _validated(model: type[_Request], data: dict[str, Any]):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = f"missing required field {param!r}"
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise ApiError(400, f"{param}: {message}{more}" if param else message + more,
                       param=param) from None


def parse_chat(body: bytes, cfg: ServeConfig) -> tuple[ChatRequest, int]:
    """(request, max_tokens to generate), or an ApiError naming the bad field."""
    req = _validated(ChatRequest, decode_json(body))
    if len(req.messages) > cfg.max_messages:
        raise ApiError(400, f"messages: {len(req.messages)} messages exceed the limit of "
                            f"{cfg.max_messages}", param="messages")
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    return req, _budget(req, cfg, param)


def parse_completion(body: bytes, cfg: ServeConfig) -> tuple[CompletionRequest, int]:
    """`/v1/completions`: (request, max_tokens to generate), or an ApiError."""
    req = _validated(CompletionRequest, decode_json(body))
    return req, _budget(req, cfg, "max_tokens")


def _budget(req: _Sampling, cfg: ServeConfig, param: str) -> int:
    """The server's limits on what one request may cost: tokens per choice, choices."""
    wanted = req.requested_tokens
    if wanted is not None and wanted > cfg.max_tokens_limit:
        raise ApiError(400, f"{param}: {wanted} exceeds this server's limit of "
                            f"{cfg.max_tokens_limit}", param=param, code="max_tokens_exceeded")
    if req.n > cfg.max_n:
        raise ApiError(400, f"n: {req.n} exceeds this server's limit of {cfg.max_n}", param="n")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options: only allowed with stream: true",
                       param="stream_options")
    return wanted if wanted is not None else cfg.default_max_tokens


def parse_rank(body: bytes, cfg: ServeConfig) -> RankRequest:
    req = _validated(RankRequest, decode_json(body))
    if len(req.candidates) > cfg.max_rank_candidates:
        raise ApiError(400, f"candidates: {len(req.candidates)} exceed the limit of "
                            f"{cfg.max_rank_candidates}", param="candidates")
    return req


def check_size(content_length: str | None, limit: int) -> None:
    """413 when the declared body size is over the limit (the body is not read at all)."""
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise ApiError(400, "invalid Content-Length header") from None
    if size > limit:
        raise ApiError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")


# -- auth ----------------------------------------------------------------------------------------
def token_digest(cfg: ServeConfig) -> bytes | None:
    """sha256 of the configured token (ServeConfig.auth_token, else $AIPO_SERVE_TOKEN), or None
    when the server is open."""
    token = cfg.auth_token.get_secret_value() if cfg.auth_token else os.environ.get(TOKEN_ENV)
    return hashlib.sha256(token.encode()).digest() if token else None


def check_auth(authorization: str | None, digest: bytes | None) -> None:
    """401 unless the `Authorization: Bearer <token>` header carries the configured token."""
    if digest is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    given = hashlib.sha256(token.strip().encode()).digest()
    # Always compare, even for a missing header, so timing says nothing about what was wrong.
    ok = hmac.compare_digest(given, digest)
    if not ok or scheme.lower() != "bearer":
        raise ApiError(401, "missing or invalid bearer token (Authorization: Bearer <token>)",
                       code="invalid_api_key", kind="authentication_error")
