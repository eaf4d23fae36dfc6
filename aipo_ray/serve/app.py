"""The Ray Serve application: a gateway (limits, auth, OpenAI shapes) in front of a chat model
deployment and an optional ranker deployment.

    POST /v1/chat/completions   OpenAI chat completions (non-streaming), one choice
    POST /rank                  {"prompt", "candidates"} -> {"scores", "best_idx", "worst_idx"}
    GET  /v1/models             the served checkpoint
    GET  /healthz               liveness, no auth

The gateway is the only deployment with a route; models scale on their own resources.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from aipo_ray.config import ModelConfig, RankingConfig, ServeConfig, StorageConfig

from .protocol import ApiError, check_auth, check_size, parse_chat, parse_rank

log = logging.getLogger(__name__)

api = FastAPI(title="aipo serve", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="chat")
class ChatModel:
    """One replica holds one copy of the checkpoint (resolved and verified in the replica)."""

    def __init__(self, model_uri: str, storage: StorageConfig, cfg: ServeConfig,
                 model: ModelConfig):
        from aipo_ray.models import resolve_model_path

        from .backends import build_chat_backend

        self.backend = build_chat_backend(resolve_model_path(model_uri, storage), cfg, model,
                                          storage)

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        return asdict(self.backend.complete(**request))


@serve.deployment(name="ranker")
class RankModel:
    def __init__(self, cfg: RankingConfig, policy_uri: str, storage: StorageConfig,
                 model: ModelConfig | None = None):
        from aipo_ray.models import resolve_model_path
        from aipo_ray.ranking import build_ranker

        self.ranker = build_ranker(cfg, resolve_model_path(policy_uri, storage), storage=storage,
                                   model=model)

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        return [float(x) for x in self.ranker.score([prompt], [candidates])[0]]


def error_response(err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes whether or not Content-Length was sent."""
    check_size(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Gateway:
    def __init__(self, chat, ranker, cfg: ServeConfig, token_digest: bytes | None, model_name: str):
        self.chat, self.ranker, self.cfg = chat, ranker, cfg
        self.digest, self.model_name = token_digest, model_name

    async def _handle(self, request: Request, handler) -> JSONResponse:
        try:
            check_auth(request.headers.get("authorization"), self.digest)
            body = await read_body(request, self.cfg.max_request_bytes)
            return JSONResponse(await handler(body))
        except ApiError as err:
            return error_response(err)
        except Exception as err:  # the model failed: say so as JSON, keep serving
            log.exception("request failed")
            return error_response(ApiError(500, f"internal error: {type(err).__name__}",
                                           code="internal_error", kind="server_error"))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._chat)

    @api.post("/rank")
    async def rank(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._rank)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            check_auth(request.headers.get("authorization"), self.digest)
        except ApiError as err:
            return error_response(err)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "owned_by": "aipo"}]})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def _chat(self, body: bytes) -> dict[str, Any]:
        req, max_tokens = parse_chat(body, self.cfg)
        out = await self.chat.complete.remote({
            "messages": [m.model_dump() for m in req.messages], "max_tokens": max_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "stop": req.stop_list,
            "seed": req.seed,
        })
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out["finish_reason"]}],
            "usage": {"prompt_tokens": out["prompt_tokens"],
                      "completion_tokens": out["completion_tokens"],
                      "total_tokens": out["prompt_tokens"] + out["completion_tokens"]},
        }

    async def _rank(self, body: bytes) -> dict[str, Any]:
        if self.ranker is None:
            raise ApiError(404, "ranking is not served here (serve.rank: false)", code="not_found")
        req = parse_rank(body, self.cfg)
        scores = await self.ranker.score.remote(req.prompt, req.candidates)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return {"scores": scores, "best_idx": order[0], "worst_idx": order[-1], "ranking": order}
