"""OpenAI's response shapes, built from the events a backend emits while it generates.

A backend yields two kinds of events per choice, as plain dicts (they cross Ray):

    {"index": i, "text": "..."}                                  more text of choice i
    {"index": i, "finish_reason": "stop" | "length",
     "prompt_tokens": p, "completion_tokens": c}                 choice i is done

`collect` turns them into one `chat.completion` / `text_completion` object; `sse_chunks` into
server-sent events in OpenAI's chunk format, ending with a `usage` chunk when asked and
`data: [DONE]`. Both read the same events, so a streamed answer is the non-streamed one in
pieces. No Ray, no FastAPI here.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["chat", "text"]
DONE = "data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Responses:
    """The OpenAI objects of one request: one id and creation time for all its chunks."""

    def __init__(self, kind: Kind, model: str):
        self.kind, self.model = kind, model
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id, self.created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def chunk(self, index: int, text: str | None = None, finish_reason: str | None = None,
              first: bool = False) -> dict[str, Any]:
        """A streamed piece of choice `index`: new text, or its finish reason."""
        if self.kind == "text":
            choice = {"index": index, "text": text or "", "logprobs": None,
                      "finish_reason": finish_reason}
            return self._envelope("text_completion", [choice])
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("chat.completion.chunk", [choice])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj, []), "usage": usage}

    def response(self, texts: dict[int, str], finish: dict[int, str],
                 usage: dict[str, int]) -> dict[str, Any]:
        """The whole (non-streamed) answer."""
        choices = []
        for i in sorted(texts):
            if self.kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": texts[i]},
                                "logprobs": None, "finish_reason": finish[i]})
            else:
                choices.append({"index": i, "text": texts[i], "logprobs": None,
                                "finish_reason": finish[i]})
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj, choices), "usage": usage}


class Usage:
    """Token counts over all choices: the prompt counted once, as OpenAI does."""

    def __init__(self):
        self.prompt_tokens, self.completion_tokens = 0, 0

    def add(self, event: dict[str, Any]) -> None:
        self.prompt_tokens = event["prompt_tokens"]
        self.completion_tokens += event["completion_tokens"]

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


async def collect(responses: Responses, events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: every choice's text joined, with usage."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = Usage()
    async for event in events:
        i = event["index"]
        texts[i] = texts.get(i, "") + event.get("text", "")
        if "finish_reason" in event:
            finish[i] = event["finish_reason"]
            usage.add(event)
    return responses.response(texts, finish, usage.as_dict())


async def sse_chunks(responses: Responses, events: AsyncIterator[dict[str, Any]],
                     include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a first chunk per choice with the assistant role, one chunk per
    piece of text, one with the finish reason, then usage (when asked) and `[DONE]`."""
    started: set[int] = set()
    usage = Usage()
    async for event in events:
        i = event["index"]
        first = i not in started
        started.add(i)
        if event.get("text") or (first and responses.kind == "chat"):
            yield sse(responses.chunk(i, event.get("text"), first=first))
        if "finish_reason" in event:
            usage.add(event)
            yield sse(responses.chunk(i, finish_reason=event["finish_reason"]))
    if include_usage:
        yield sse(responses.usage_chunk(usage.as_dict()))
    yield DONE


async def until_error(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """`chunks`, but a failure after the 200 went out ends the stream with an `error` event
    (OpenAI's shape; the openai client raises it) instead of a silently cut connection."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as err:
        log.exception("stream failed")
        yield sse({"error": {"message": f"internal error: {type(err).__name__}",
                             "type": "server_error", "param": None, "code": "internal_error"}})


async def peek(items: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    """(the first item, all items): the first is awaited now, so a failure before the first
    token raises while the HTTP status can still say so."""
    first = await items.__anext__()

    async def chained():
        yield first
        async for item in items:
            yield item

    return first, chained()
