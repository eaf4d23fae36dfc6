"""The `hf` backend: transformers `generate` inside Ray Data actors, for CPU runs and tests.

One model per actor (`ActorPoolStrategy`), prompts batched with LEFT padding so every row's
last prompt token sits at the same position and generation continues from there. The chat
template is applied as in training (`chat_texts`, tokenized without extra special tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from aipo_ray.actor_pool import PoolSpec, map_pool
from aipo_ray.config import GenerationConfig, ModelConfig, StorageConfig
from aipo_ray.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from aipo_ray.storage.schemas import GENERATIONS

from .base import (
    Sampling,
    candidate_seed,
    chat_texts,
    count_until_eos,
    eos_token_ids,
    finish_reason,
    prompt_blocks,
)
from .registry import register_generator

if TYPE_CHECKING:
    import ray.data


class SeededSampler(LogitsProcessor):
    """Temperature and top-p, then an exponential race drawn from one RNG stream per row.

    argmax(log p − log E) with E ~ Exp(1) per token is an exact sample from p (the Gumbel-max
    trick). transformers' own sampling draws the whole batch from one global RNG, so a row's
    sample depends on its batch mates; here each row (prompt, candidate) owns a generator seeded
    by `candidate_seed`, so its sample does not. `generate` runs greedy (do_sample=False) and its
    argmax picks the sample.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        # Drawn on CPU whatever the model's device, so CPU and GPU replicas sample alike.
        race = torch.stack([
            torch.empty(scores.shape[-1]).exponential_(generator=g) for g in self.generators
        ])
        return torch.log_softmax(scores, dim=-1) - race.log().to(scores.device)


class HFGenerator:
    """Ray Data callable class: a batch of prompts in, `sampling.n` rows per prompt out."""

    def __init__(self, model_uri: str, sampling: Sampling, storage: StorageConfig | None = None,
                 dtype: str = "auto", model: ModelConfig | None = None):
        # Resolved here, in the actor, so each node fetches (and caches) its own copy.
        path = resolve_model_path(model_uri, storage)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model, path, storage, padding_side="left")
        weights = resolve_dtype(model, self.device.type == "cuda", dtype)
        self.model = load_causal_lm(model, path, weights).to(self.device).eval()
        self.eos_ids = eos_token_ids(self.tokenizer, self.model.generation_config)
        self.sampling = sampling

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        prompt_ids = [str(p) for p in batch["prompt_id"]]
        prompts = [str(p) for p in batch["prompt"]]
        n = self.sampling.n
        enc = self.tokenizer(chat_texts(self.tokenizer, prompts), padding=True,
                             add_special_tokens=False, return_tensors="pt")
        # Candidates are explicit rows (row r = prompt r // n, candidate r % n) rather than
        # num_return_sequences, which transformers refuses for greedy decoding with n > 1.
        input_ids = enc["input_ids"].repeat_interleave(n, dim=0).to(self.device)
        attention_mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(self.device)
        seeds = [candidate_seed(self.sampling.seed, pid, j) for pid in prompt_ids for j in range(n)]
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **self._generate_kwargs(seeds)
            )
        return self._rows(prompt_ids, prompts, out[:, input_ids.shape[1]:].tolist())

    def _generate_kwargs(self, seeds: list[int]) -> dict[str, Any]:
        from transformers import GenerationConfig as HFGenerationConfig
        from transformers import LogitsProcessorList

        # A fresh generation config: the model's own defaults (sampling values, penalties) must
        # not leak in, or the same config would mean different things for different models.
        config = HFGenerationConfig(
            max_new_tokens=self.sampling.max_tokens, do_sample=False, num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids,
        )
        kwargs: dict[str, Any] = {"generation_config": config}
        if not self.sampling.greedy:
            kwargs["logits_processor"] = LogitsProcessorList([
                SeededSampler(seeds, self.sampling.temperature, self.sampling.top_p)
            ])
        return kwargs

    def _rows(self, prompt_ids: list[str], prompts: list[str], new_tokens: list[list[int]]) -> pa.Table:
        n = self.sampling.n
        cols: dict[str, list] = {name: [] for name in GENERATIONS.names}
        for row, tokens in enumerate(new_tokens):
            count, stopped = count_until_eos(tokens, self.eos_ids)
            cols["prompt_id"].append(prompt_ids[row // n])
            cols["prompt"].append(prompts[row // n])
            cols["candidate_idx"].append(row % n)
            cols["response"].append(self.tokenizer.decode(tokens[:count], skip_special_tokens=True))
            cols["num_tokens"].append(count)
            cols["finish_reason"].append(finish_reason(stopped))
        return pa.table(cols, schema=GENERATIONS)


@register_generator("hf")
def generate_hf(
    ds: ray.data.Dataset, model_uri: str, cfg: GenerationConfig, sampling: Sampling,
    storage: StorageConfig | None, model: ModelConfig | None = None,
) -> ray.data.Dataset:
    """The `hf` Generator: `cfg.num_replicas` actors, `cfg.batch_size` prompts per generate call."""
    import ray.data

    blocks = prompt_blocks(ds, cfg.batch_size)
    if not blocks:
        return ray.data.from_arrow(GENERATIONS.empty_table())
    spec = PoolSpec.of("generation", cfg, size=min(cfg.num_replicas, len(blocks)),
                       batch_format="numpy")
    return map_pool(ray.data.from_arrow(blocks), HFGenerator, spec, GENERATIONS,
                    model_uri=model_uri, sampling=sampling, storage=storage, dtype=cfg.dtype,
                    model=model)
