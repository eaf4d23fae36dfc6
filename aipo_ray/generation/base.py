"""What every generation backend shares: the sampling request, seeds, EOS accounting, the check.

A backend turns a Dataset of (prompt_id, prompt) into one row per candidate with the
`generations` contract columns (storage/schemas.py). The pieces here are the parts that must
agree across backends so that switching `generation.backend` changes speed, not meaning.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from aipo_ray.actor_pool import Stall, as_table
from aipo_ray.config import GenerationConfig, ModelConfig, StorageConfig
from aipo_ray.watchdog import few_ids

if TYPE_CHECKING:
    import ray.data

OUTPUT_COLUMNS = ("prompt_id", "prompt", "candidate_idx", "response", "num_tokens", "finish_reason")
STOP, LENGTH = "stop", "length"


class GenerationError(RuntimeError):
    """Generation broke its contract (missing or extra candidates); the message names prompt ids."""


@dataclass(frozen=True)
class Sampling:
    """One call's sampling values, resolved from the config plus the caller's overrides."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int

    @classmethod
    def resolve(
        cls, cfg: GenerationConfig, n: int | None = None, max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None,
    ) -> Sampling:
        """None takes the config's value. A config seed of None draws a fresh base seed."""
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
        sampling = cls(
            n=cfg.num_candidates if n is None else n,
            max_tokens=cfg.max_tokens if max_tokens is None else max_tokens,
            temperature=cfg.temperature if temperature is None else temperature,
            top_p=cfg.top_p if top_p is None else top_p,
            seed=seed,
        )
        if sampling.n < 1 or sampling.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={sampling.n}, "
                             f"max_tokens={sampling.max_tokens})")
        if sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1] (got "
                             f"{sampling.temperature}, {sampling.top_p})")
        return sampling

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def candidate_seed(seed: int, prompt_id: str, candidate_idx: int) -> int:
    """The seed of one candidate: a function of (seed, prompt, index) only.

    Neither the batch a prompt lands in nor the replica that runs it changes its samples, and
    candidate i is the same whether 2 or 8 candidates are drawn.
    """
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{candidate_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def user_messages(prompt: str) -> list[dict[str, str]]:
    """The conversation a prompt becomes before the chat template: one user turn."""
    return [{"role": "user", "content": prompt}]


def chat_texts(tokenizer, prompts: Iterable[str]) -> list[str]:
    """Prompts as the model sees them: the chat template around one user turn, ready to answer.

    Tokenize the result with add_special_tokens=False: the template already holds any BOS, and
    a second one (Llama-3 tokenizers add it by default) would shift every log-prob.
    """
    return [tokenizer.apply_chat_template(user_messages(p), add_generation_prompt=True,
                                          tokenize=False) for p in prompts]


def eos_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's list."""
    ids = set()
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.update(value if isinstance(value, list | tuple) else [value])
    return sorted(int(i) for i in ids)


def count_until_eos(tokens: Sequence[int], eos_ids: Iterable[int]) -> tuple[int, bool]:
    """(tokens before the first EOS, whether an EOS was produced).

    Pad equals EOS for SmolLM2, so after a row stops its tail is EOS too: the first one counts.
    """
    eos = set(eos_ids)
    for i, token in enumerate(tokens):
        if int(token) in eos:
            return i, True
    return len(tokens), False


def finish_reason(stopped: bool) -> str:
    return STOP if stopped else LENGTH


def check_candidates(table: pa.Table, prompt_ids: Iterable[str], n: int) -> None:
    """Every prompt has exactly candidates 0..n-1 and nothing else; raise naming the prompts."""
    expected = set(prompt_ids)
    got = table.group_by("prompt_id").aggregate([
        ("candidate_idx", "count"), ("candidate_idx", "count_distinct"),
        ("candidate_idx", "min"), ("candidate_idx", "max"),
    ])
    ok = pc.and_(
        pc.and_(pc.equal(got["candidate_idx_count"], n),
                pc.equal(got["candidate_idx_count_distinct"], n)),
        pc.and_(pc.equal(got["candidate_idx_min"], 0), pc.equal(got["candidate_idx_max"], n - 1)),
    )
    bad = sorted(got.filter(pc.invert(ok))["prompt_id"].to_pylist())
    seen = set(got["prompt_id"].to_pylist())
    missing, unknown = sorted(expected - seen), sorted(seen - expected)
    problems = []
    if bad:
        problems.append(f"{len(bad)} prompts without exactly candidates 0..{n - 1}: {few_ids(bad)}")
    if missing:
        problems.append(f"{len(missing)} prompts with no candidates: {few_ids(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} prompt ids that were not asked for: {few_ids(unknown)}")
    if problems:
        raise GenerationError("generations: " + "; ".join(problems)
                              + " (a replica dropped or duplicated rows; rerun the stage)")


def prompt_blocks(ds: ray.data.Dataset, rows_per_block: int) -> list[pa.Table]:
    """The prompts of `ds` (prompt_id, prompt), materialised, in blocks of `rows_per_block`.

    Prompt tables are small. Materialising them before the engine actors start does two jobs:
    every replica gets blocks of its own (one big block would go to one actor), and no upstream
    Ray Data task is left waiting for a CPU that the actor pool has taken — on a small cluster
    whose CPUs the replicas fill, that wait never ends. For the same reason the columns are
    selected here, on the driver, not by a Ray Data task (a shared vLLM engine may hold every
    CPU between calls).
    """
    import ray

    columns = ["prompt_id", "prompt"]
    parts = [t.select(columns) for t in map(as_table, ray.get(ds.to_arrow_refs())) if t.num_rows]
    if not parts:
        return []
    table = pa.concat_tables(parts, promote_options="default")
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]


def progress_deadline(cfg: GenerationConfig) -> Stall | None:
    """How a stage watches the backend's output: the vllm backend (ray.data.llm takes no
    per-batch timeout) by progress, `timeout_s` between outputs plus `startup_timeout_s` before
    the first; None for hf, whose actors run each batch under the pool's own deadline."""
    if cfg.resolved_backend() != "vllm":
        return None
    return Stall(timeout_s=cfg.timeout_s, startup_s=cfg.startup_timeout_s, what="generation")


@runtime_checkable
class Generator(Protocol):
    """A backend: prompts in, one row per candidate out (OUTPUT_COLUMNS), lazily as a Dataset.

    Implementations resolve `model_uri` where the weights are loaded, so each node of a
    multi-node cluster fetches its own copy, and read it as `model` says (tokenizer, chat
    template, trust_remote_code, dtype: `aipo_ray.models.loading`).
    """

    def __call__(
        self, ds: ray.data.Dataset, model_uri: str, cfg: GenerationConfig, sampling: Sampling,
        storage: StorageConfig | None, model: ModelConfig | None = None,
    ) -> ray.data.Dataset: ...
