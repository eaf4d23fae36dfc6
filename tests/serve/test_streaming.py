"""Streaming without a server: OpenAI chunk shapes from backend events, incremental
detokenization with stop strings, and the transformers backend yielding while it generates."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from transformers import AutoTokenizer

from aipo_ray.serve.backends import HFChat, TextDeltas
from aipo_ray.serve.openai_format import DONE, Responses, collect, sse_chunks

EVENTS = [
    {"index": 0, "text": "Hel"}, {"index": 0, "text": "lo"},
    {"index": 0, "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2},
    {"index": 1, "text": "Hey"},
    {"index": 1, "finish_reason": "length", "prompt_tokens": 5, "completion_tokens": 3},
]


async def _aiter(items):
    for item in items:
        yield item


def _sse(kind: str, include_usage: bool) -> list:
    async def run():
        return [c async for c in sse_chunks(Responses(kind, "m"), _aiter(EVENTS), include_usage)]
    chunks = asyncio.run(run())
    assert chunks[-1] == DONE and all(c.startswith("data: ") and c.endswith("\n\n") for c in chunks)
    return [json.loads(c[len("data: "):]) for c in chunks[:-1]]


def test_chat_chunks_and_the_whole_answer_say_the_same():
    whole = asyncio.run(collect(Responses("chat", "m"), _aiter(EVENTS)))
    assert [c["message"]["content"] for c in whole["choices"]] == ["Hello", "Hey"]
    assert [c["finish_reason"] for c in whole["choices"]] == ["stop", "length"]
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    chunks = _sse("chat", include_usage=True)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {0: "Hello", 1: "Hey"}
    firsts = [c["choices"][0]["delta"] for c in chunks[:-1] if "role" in c["choices"][0]["delta"]]
    assert [d["role"] for d in firsts] == ["assistant", "assistant"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_text_chunks_have_no_usage_unless_asked():
    chunks = _sse("text", include_usage=False)
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == 0) == "Hello"


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def _released(tokenizer, text: str, stops: list[str]) -> tuple[list[str], bool]:
    deltas, pieces, hit = TextDeltas(tokenizer, stops), [], False
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        piece, hit = deltas.add([token])
        pieces.append(piece)
        if hit:
            break
    if not hit:
        pieces.append(deltas.flush())
    return [p for p in pieces if p], hit


def test_deltas_never_split_a_character_and_join_to_the_decode(tokenizer):
    text = "Café 🙂 naïve 日本語 done"
    pieces, hit = _released(tokenizer, text, [])
    assert not hit and "".join(pieces) == text and len(pieces) > 3
    assert not any("\ufffd" in p for p in pieces)


def test_deltas_hold_back_a_stop_string_spread_over_tokens(tokenizer):
    pieces, hit = _released(tokenizer, "Hello world. Bye now", ["ld. B"])
    assert hit and "".join(pieces) == "Hello wor"


def test_hf_backend_yields_text_while_it_still_generates(tiny_llama_path):
    """Cancelling after the first piece stops `generate` early: the text was there before the
    end of generation, and a closed stream does not keep the model busy."""
    chat = HFChat(tiny_llama_path)
    ids = chat.prompt_ids([{"role": "user", "content": "Hi"}])["input_ids"][0].tolist()
    cancel = threading.Event()
    events = []
    for event in chat.stream(ids, 256, 0.0, 1.0, [], None, cancel):
        events.append(event)
        cancel.set()
    assert "text" in events[0]
    assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] < 256
    whole = chat.complete([{"role": "user", "content": "Hi"}], 12, 0.0, 1.0, [], None)
    assert whole.completion_tokens == 12 and whole.text.startswith(events[0]["text"])
