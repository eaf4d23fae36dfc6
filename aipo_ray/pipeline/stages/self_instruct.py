"""SelfInstructStage: θ_t writes new instructions from few-shot examples of the pool (Algorithm 1).

This stage only generates and parses (the expensive part); the rule filters run in the `prompts`
stage, so filter settings can change without regenerating. Its table holds one row per request:
prompt_id, prompt (the parsed instruction, possibly empty), source, iteration, plus the request id,
the raw response, finish_reason and `truncated`. Bad rows of the seed sources go to its
`_rejected/`.
"""

from __future__ import annotations

import logging

from aipo_ray.data.pool import load_pool
from aipo_ray.data.self_instruct import SELF_INSTRUCT, num_requests, self_instruct
from aipo_ray.pipeline.stage import StageContext, StageError, StageResult
from aipo_ray.storage import conform, rejected_rows

log = logging.getLogger(__name__)

# Sampling values self-instruct sets itself; the rest of `generation` (backend, placement) applies.
_OVERRIDDEN = ("num_candidates", "max_tokens", "temperature", "top_p")


def earlier_prompts_fingerprints(ctx: StageContext) -> list[str | None]:
    """The pool grows with every iteration's prompts, so their fingerprints are inputs too."""
    records = [ctx.run_dir.stage_success(j, "prompts") for j in range(1, ctx.iteration)]
    return [r.get("fingerprint") if r else None for r in records]


class SelfInstructStage:
    """x^i = SelfInstruct_θt(X^pool) for P·oversample requests; parsed, not yet filtered."""

    name = "self_instruct"
    inputs = ()
    config_keys = ("prompts", "seed")

    def fingerprint_extra(self, ctx: StageContext) -> dict:
        si = ctx.config.self_instruct.model_dump(exclude={"filters"})
        gen = ctx.config.generation.model_dump(exclude=set(_OVERRIDDEN))
        return {"self_instruct": si, "generation": gen,
                "earlier_prompts": earlier_prompts_fingerprints(ctx)}

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config
        pool = load_pool(cfg.prompts, ctx.run_dir, ctx.iteration)
        if pool.seeds.rejected:
            ctx.write_rejected(self.name, rejected_rows(pool.seeds.rejected))
        seeds, generated = pool.seed_texts, pool.generated_texts
        if not seeds and not generated:
            raise StageError(
                f"iteration {ctx.iteration} stage 'self_instruct': the prompt pool is empty; every "
                f"row of prompts.sources was rejected (see {ctx.stage_path(self.name)}/_rejected/)"
            )
        table = self_instruct(seeds, generated, ctx.policy_uri, cfg.self_instruct, cfg.generation,
                              seed=cfg.seed, iteration=ctx.iteration, storage=cfg.storage)
        ctx.write(self.name, conform(table, SELF_INSTRUCT, self.name))
        parsed = sum(1 for t in table.column("prompt").to_pylist() if t)
        log.info("self-instruct: %d requests, %d parsed, pool %d seeds + %d generated",
                 table.num_rows, parsed, len(seeds), len(generated))
        return StageResult(
            rows_in=pool.seeds.rows_in, rows_out=table.num_rows, rejected=pool.seeds.rejected_counts,
            extra={"requests": num_requests(cfg.self_instruct), "parsed": parsed,
                   "pool_seeds": len(seeds), "pool_generated": len(generated)},
        )
