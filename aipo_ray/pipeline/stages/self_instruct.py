"""SelfInstructStage: θ_t writes new instructions from few-shot examples of the pool (Algorithm 1).

This stage only generates and parses (the expensive part); the rule filters run in the `prompts`
stage, so filter settings can change without regenerating. Its table holds one row per request:
prompt_id, prompt (the parsed instruction, possibly empty), source, iteration, plus the request id,
the raw response, finish_reason and `truncated`. Bad rows of the seed sources go to its
`_rejected/`.
"""

from __future__ import annotations

import logging
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from aipo_ray.config import RunConfig
from aipo_ray.data.pool import load_pool
from aipo_ray.data.self_instruct import (
    answer_requests,
    build_requests,
    num_requests,
    parse_responses,
)
from aipo_ray.generation import check_candidates, progress_deadline
from aipo_ray.pipeline.rounds import earlier_round_prompts
from aipo_ray.pipeline.sharded import ShardJob, run_sharded
from aipo_ray.pipeline.stage import (
    MODEL_IO_KEYS,
    PolicyStage,
    StageContext,
    StageError,
    StageResult,
)
from aipo_ray.storage import rejected_rows
from aipo_ray.storage.schemas import SELF_INSTRUCT

log = logging.getLogger(__name__)

# Self-instruct sets its own sampling values (self_instruct.*) and leaves the filters to the
# prompts stage; of `generation` it uses the engine and its placement, not the sampling values.
_SELF_INSTRUCT_KEYS = tuple(f"self_instruct.{k}" for k in (
    "num_instructions", "num_few_shot", "num_few_shot_generated", "prompt_template", "oversample",
    "max_tokens", "temperature", "top_p"))
_ENGINE_KEYS = tuple(f"generation.{k}" for k in (
    "backend", "seed", "batch_size", "num_replicas", "tensor_parallel_size", "gpus_per_replica",
    "max_model_len", "dtype", "engine_kwargs"))


class SelfInstructStage(PolicyStage):
    """x^i = SelfInstruct_θt(X^pool) for P·oversample requests; parsed, not yet filtered."""

    name = "self_instruct"
    schema = SELF_INSTRUCT
    # The pool grows with every earlier iteration's prompts (and earlier rounds' of this one).
    history_inputs = ("prompts",)
    round_history_inputs = ("prompts",)
    config_keys = ("prompts", "seed", *_SELF_INSTRUCT_KEYS, *_ENGINE_KEYS, *MODEL_IO_KEYS)
    resumable = True  # sharded by request id (storage.shard_size requests per part)
    shares_engine = True  # θ_t's engine stays up for the generations stage

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        return config.self_instruct.enabled

    def resource_asks(self, config):
        from aipo_ray.resources import generation_asks

        return generation_asks(config)

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config
        pool = load_pool(cfg.prompts, ctx.run_dir, ctx.iteration, earlier_round_prompts(ctx))
        if pool.seeds.rejected:
            ctx.write_rejected(self.name, rejected_rows(pool.seeds.rejected))
        seeds, generated = pool.seed_texts, pool.generated_texts
        if not seeds and not generated:
            raise StageError(
                f"iteration {ctx.iteration} stage 'self_instruct': the prompt pool is empty; every "
                f"row of prompts.sources was rejected (see {ctx.stage_path(self.name)}/_rejected/)"
            )
        requests = build_requests(seeds, generated, cfg.self_instruct, seed=cfg.seed,
                                  iteration=ctx.iteration, round=ctx.round)
        job = ShardJob(
            prompt_ids=requests["prompt_id"].to_pylist(),
            read=lambda ids: requests.filter(pc.is_in(requests["prompt_id"], pa.array(ids))),
            build=lambda shard: answer_requests(shard, ctx.policy_uri, cfg.self_instruct,
                                                cfg.generation, storage=cfg.storage,
                                                model=cfg.model),
            finish=partial(finish_self_instruct, iteration=ctx.iteration), schema=SELF_INSTRUCT,
            stall=progress_deadline(cfg.generation),
        )
        totals = run_sharded(self.name, ctx, job)
        parsed = int(totals.counts.get("parsed", 0))
        log.info("self-instruct: %d requests, %d parsed, pool %d seeds + %d generated",
                 totals.rows, parsed, len(seeds), len(generated))
        return StageResult(
            rows_in=pool.seeds.rows_in, rows_out=totals.rows, rejected=pool.seeds.rejected_counts,
            extra={"requests": num_requests(cfg.self_instruct), "parsed": parsed,
                   "pool_seeds": len(seeds), "pool_generated": len(generated)},
        )


def finish_self_instruct(answers: pa.Table, request_ids: list[str], iteration: int
                         ) -> tuple[pa.Table, dict[str, int]]:
    """One shard's answers (one per request, checked) parsed into SELF_INSTRUCT rows."""
    check_candidates(answers, request_ids, 1)
    table = parse_responses(answers, iteration)
    return table, {"parsed": sum(1 for t in table.column("prompt").to_pylist() if t)}
