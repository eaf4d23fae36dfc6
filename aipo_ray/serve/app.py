"""The Ray Serve application: a gateway (limits, auth, OpenAI shapes) in front of a chat model
deployment and an optional ranker deployment.

    POST /v1/chat/completions   OpenAI chat completions; `stream`, `n` (up to serve.max_n)
    POST /v1/completions        OpenAI text completions (the prompt continued, no chat template)
    POST /rank                  {"prompt", "candidates"} -> {"scores", "best_idx", "worst_idx"}
    GET  /v1/models             the served checkpoint
    GET  /healthz               liveness, no auth

The chat deployment is ours (`ChatModel`, transformers) or ray.serve.llm's `LLMServer` (vLLM,
see `vllm_engine`). The gateway is the only deployment with a route; models scale on their own
resources.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from aipo_ray.config import ModelConfig, RankingConfig, ServeConfig, StorageConfig

from .openai_format import Responses, collect, peek, sse_chunks, until_error
from .protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    check_auth,
    check_size,
    parse_chat,
    parse_completion,
    parse_rank,
)

log = logging.getLogger(__name__)

api = FastAPI(title="aipo serve", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="chat")
class ChatModel:
    """The transformers backend: one replica holds one copy of the checkpoint (resolved and
    verified in the replica)."""

    def __init__(self, model_uri: str, storage: StorageConfig, model: ModelConfig):
        from aipo_ray.models import resolve_model_path

        from .backends import HFChat

        self.backend = HFChat(resolve_model_path(model_uri, storage), model, storage)

    async def events(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """`openai_format` events of every choice, as they are generated. Generation runs in a
        thread; when the caller goes away (a closed stream), it stops at the next token."""
        cancel = threading.Event()
        it = self.backend.events(request, cancel)
        try:
            while (event := await asyncio.to_thread(next, it, None)) is not None:
                yield event
        finally:
            cancel.set()


@serve.deployment(name="ranker")
class RankModel:
    def __init__(self, cfg: RankingConfig, policy_uri: str, storage: StorageConfig,
                 model: ModelConfig | None = None):
        from aipo_ray.models import resolve_model_path
        from aipo_ray.ranking import build_ranker

        self.ranker = build_ranker(cfg, resolve_model_path(policy_uri, storage), storage=storage,
                                   model=model)

    def rank(self, prompt: str, candidates: list[str]) -> dict[str, Any]:
        """The scores, or why the ranker refused the prompt (a judge's unreadable reply)."""
        ranking = self.ranker.best_worst([prompt], [candidates])
        refused = (ranking.rejections or [None])[0]
        return {"scores": [float(x) for x in ranking.scores[0]], "refused": refused}


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


def hf_request(req: ChatRequest | CompletionRequest, max_tokens: int) -> dict[str, Any]:
    """What `ChatModel.events` reads: the conversation or prompt and the sampling settings."""
    out: dict[str, Any] = {"n": req.n, "max_tokens": max_tokens, "temperature": req.temperature,
                           "top_p": req.top_p, "stop": req.stop_list, "seed": req.seed}
    if isinstance(req, ChatRequest):
        out["messages"] = [m.model_dump() for m in req.messages]
    else:
        out["prompt"] = req.prompt
    return out


def vllm_request(req: ChatRequest | CompletionRequest, max_tokens: int,
                 model_id: str) -> dict[str, Any]:
    """The request as the client sent it (fields we do not know included, for vLLM), with the
    server's token budget and the engine's model id."""
    body = req.model_dump(exclude_unset=True)
    body.pop("max_completion_tokens", None)
    return {**body, "max_tokens": max_tokens, "model": model_id}


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Gateway:
    def __init__(self, chat, ranker, cfg: ServeConfig, token_digest: bytes | None, model_name: str,
                 backend: str = "hf"):
        self.chat, self.ranker, self.cfg = chat, ranker, cfg
        self.digest, self.model_name, self.backend = token_digest, model_name, backend

    async def _handle(self, request: Request, handler) -> Response:
        try:
            check_auth(request.headers.get("authorization"), self.digest)
            body = await read_body(request, self.cfg.max_request_bytes)
            out = await handler(body)
            return out if isinstance(out, Response) else JSONResponse(out)
        except ApiError as err:
            return error_response(err)
        except Exception as err:  # the model failed: say so as JSON, keep serving
            log.exception("request failed")
            return error_response(ApiError(500, f"internal error: {type(err).__name__}",
                                           code="internal_error", kind="server_error"))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, lambda body: self._generate("chat", body))

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle(request, lambda body: self._generate("text", body))

    @api.post("/rank")
    async def rank(self, request: Request) -> Response:
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

    async def _generate(self, kind: str, body: bytes) -> dict[str, Any] | Response:
        """A chat or text completion, whole or as server-sent events."""
        req, max_tokens = (parse_chat if kind == "chat" else parse_completion)(body, self.cfg)
        if self.backend == "vllm":
            from .vllm_engine import vllm_answer

            out = await vllm_answer(self.chat, kind, vllm_request(req, max_tokens,
                                                                  self.model_name))
            if isinstance(out, dict):
                return out
            chunks = out
        else:
            events = self.chat.options(stream=True).events.remote(hf_request(req, max_tokens))
            responses = Responses(kind, self.model_name)
            if not req.stream:
                return await collect(responses, events)
            _, events = await peek(events)
            chunks = sse_chunks(responses, events, req.include_usage)
        return StreamingResponse(until_error(chunks), media_type="text/event-stream")

    async def _rank(self, body: bytes) -> dict[str, Any]:
        if self.ranker is None:
            raise ApiError(404, "ranking is not served here (serve.rank: false)", code="not_found")
        req = parse_rank(body, self.cfg)
        ranked = await self.ranker.rank.remote(req.prompt, req.candidates)
        if ranked["refused"]:
            raise ApiError(502, f"the ranker could not rank these candidates: {ranked['refused']}",
                           code="ranker_refused", kind="server_error")
        scores = ranked["scores"]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return {"scores": scores, "best_idx": order[0], "worst_idx": order[-1], "ranking": order}
