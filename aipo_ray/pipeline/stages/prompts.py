"""PromptsStage: the prompts x^i of iteration i, the table every later stage keys on.

With self-instruct on, these are the first P instructions of the `self_instruct` table that pass
the rule filters (aipo_ray.data.filters): refused ones go to `_rejected/` with their reason, and
`_SUCCESS` counts them per reason; instructions beyond the first P that pass are surplus
(`extra.surplus`), not rejected. With self-instruct off, the prompts are the seed pool itself (or
the iteration's `per_iteration` slice of it), and bad source rows are the rejected ones.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.data.filters import Instruction, filter_instructions
from aipo_ray.data.pool import load_pool
from aipo_ray.data.sources import load_prompts
from aipo_ray.pipeline.rounds import PoolExhausted, earlier_round_prompts
from aipo_ray.pipeline.stage import (
    MODEL_IO_KEYS,
    PolicyStage,
    StageContext,
    StageError,
    StageResult,
)
from aipo_ray.storage import conform, rejected_rows
from aipo_ray.storage.schemas import PROMPTS, SELF_INSTRUCT

log = logging.getLogger(__name__)


class PromptsStage(PolicyStage):
    """`self_instruct`: whether the chain has a SelfInstructStage before this one. With it, the
    prompts are θ_t's filtered instructions (θ_t's tokenizer counts their tokens, and the pool of
    earlier iterations' prompts decides near-duplicates); without it, a fixed pool that no model
    reads, so a recommitted θ_t leaves this stage done."""

    name = "prompts"
    schema = PROMPTS
    # A later sampling round takes no prompt an earlier round of the iteration took.
    round_history_inputs = ("prompts",)

    def __init__(self, self_instruct: bool = True):
        self.self_instruct = self_instruct
        if self_instruct:
            self.inputs = ("self_instruct",)
            self.history_inputs = ("prompts",)
            self.config_keys = ("prompts", "seed", "self_instruct.num_instructions",
                                "self_instruct.filters", *MODEL_IO_KEYS)
        else:
            self.config_keys = ("prompts", "seed")

    @classmethod
    def for_config(cls, config: RunConfig) -> PromptsStage:
        return cls(self_instruct=config.self_instruct.enabled)

    def models(self, ctx: StageContext) -> dict[str, str]:
        return super().models(ctx) if self.self_instruct else {}

    def run(self, ctx: StageContext) -> StageResult:
        if self.self_instruct:
            return self._filter_self_instruct(ctx)
        return self._fixed_pool(ctx)

    def _fixed_pool(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config.prompts
        loaded = load_prompts(cfg, ctx.run_dir.storage, iteration=ctx.iteration)
        table = loaded.table
        taken = earlier_round_prompts(ctx)
        if taken.num_rows:
            table = _later_round_slice(table, taken, cfg.per_iteration, ctx)
        elif cfg.per_iteration is not None and table.num_rows:
            table = table.take(iteration_slice(table.num_rows, cfg.per_iteration,
                                               ctx.config.seed, ctx.iteration))
        if loaded.rejected:
            ctx.write_rejected(self.name, rejected_rows(loaded.rejected))
        _require_rows(table, ctx, self.name)
        ctx.write(self.name, table)
        return StageResult(rows_in=loaded.rows_in, rows_out=table.num_rows,
                           rejected=loaded.rejected_counts,
                           extra={"pool": loaded.table.num_rows, "self_instruct": False})

    def _filter_self_instruct(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config.self_instruct
        raw = conform(ctx.read("self_instruct"), SELF_INSTRUCT, "self_instruct").to_pylist()
        taken = earlier_round_prompts(ctx)
        pool = load_pool(ctx.config.prompts, ctx.run_dir, ctx.iteration, taken)
        counts = token_counts([r["prompt"] for r in raw], ctx)
        instructions = [Instruction(r["prompt"] or "", n, bool(r["truncated"]))
                        for r, n in zip(raw, counts, strict=True)]
        result = filter_instructions(instructions, pool.texts, cfg.filters,
                                     limit=cfg.num_instructions)
        kept = [raw[i] for i in result.kept]
        # The near-duplicate filter already refuses what earlier rounds took, unless it is off.
        again = set(taken.column("prompt_id").to_pylist())
        kept = [r for r in kept if r["prompt_id"] not in again]
        table = pa.Table.from_pylist(
            [{**{k: r[k] for k in PROMPTS.names}, "iteration": ctx.iteration} for r in kept],
            schema=PROMPTS)
        rejected = [{"reason": reason, "prompt_id": raw[i]["prompt_id"], "_source": "self_instruct",
                     "_row": i, "prompt": raw[i]["prompt"], "response": raw[i]["response"]}
                    for i, reason in result.rejected]
        if rejected:
            ctx.write_rejected(self.name, rejected_rows(rejected))
        if table.num_rows < cfg.num_instructions:
            log.warning("self-instruct kept %d of the %d instructions wanted (%d requests); raise "
                        "self_instruct.oversample or relax self_instruct.filters",
                        table.num_rows, cfg.num_instructions, len(raw))
        _require_rows(table, ctx, self.name)
        ctx.write(self.name, table)
        return StageResult(rows_in=len(raw), rows_out=table.num_rows, rejected=result.counts,
                           extra={"wanted": cfg.num_instructions, "surplus": len(result.surplus),
                                  "pool": len(pool.texts), "self_instruct": True})


def _later_round_slice(pool: pa.Table, taken: pa.Table, size: int | None,
                       ctx: StageContext) -> pa.Table:
    """Sampling round r > 1 of a fixed pool: `size` prompts that rounds 1..r-1 did not take,
    in a permutation seeded by (seed, iteration, round)."""
    used = set(taken.column("prompt_id").to_pylist())
    left = [i for i, pid in enumerate(pool.column("prompt_id").to_pylist()) if pid not in used]
    if not left:
        raise PoolExhausted(f"the prompt pool is used up after {ctx.round - 1} rounds "
                            f"({len(used)} prompts)")
    order = np.random.default_rng([ctx.config.seed, ctx.iteration, ctx.round]).permutation(left)
    return pool.take(order[: size or len(order)])


def iteration_slice(n: int, size: int, seed: int, iteration: int) -> np.ndarray:
    """Rows of iteration i: the i-th block of `size` in a seeded permutation, wrapping around, so
    consecutive iterations see different prompts until the pool is used up."""
    order = np.random.default_rng(seed).permutation(n)
    start = (iteration - 1) * size
    return order[np.arange(start, start + min(size, n)) % n]


def token_counts(texts: list[str], ctx: StageContext) -> list[int]:
    """Instruction lengths under θ_t's tokenizer (no special tokens); `model.tokenizer` wins."""
    from aipo_ray.models import load_tokenizer, resolve_model_path

    model, storage = ctx.config.model, ctx.run_dir.storage
    # θ_t's weights are fetched only when its own tokenizer is the one to use.
    model_dir = None if model.tokenizer else resolve_model_path(ctx.policy_uri, storage)
    tokenizer = load_tokenizer(model, model_dir, storage)
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _require_rows(table: pa.Table, ctx: StageContext, stage: str) -> None:
    if table.num_rows == 0 and ctx.round > 1:  # the rounds before it stand: train on theirs
        raise PoolExhausted(f"sampling round {ctx.round} found no new prompt (see "
                            f"{ctx.stage_path(stage)}/_rejected/)")
    if table.num_rows == 0:
        raise StageError(
            f"iteration {ctx.iteration} stage {stage!r}: no prompt survived; see "
            f"{ctx.stage_path(stage)}/_rejected/ for the reasons"
        )
