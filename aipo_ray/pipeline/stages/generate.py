"""GenerateStage: N candidate responses per prompt with θ_t, the table the ranker scores.

Empty and truncated (finish_reason 'length') responses stay in the table, because the ranking
sees all N candidates of a prompt; the stage counts them in `_SUCCESS` (`extra.empty`,
`extra.truncated`) and the pairs stage drops them by rule.
"""

from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from aipo_ray.generation import check_candidates, generate, progress_deadline
from aipo_ray.pipeline.sharded import ShardJob, run_sharded
from aipo_ray.pipeline.stage import MODEL_IO_KEYS, PolicyStage, StageContext, StageResult
from aipo_ray.storage.schemas import GENERATIONS


class GenerateStage(PolicyStage):
    """Sharded by prompt (`storage.shard_size` prompts per part, a prompt's N candidates in one);
    a killed run resumes with the shards it committed."""

    name = "generations"
    inputs = ("prompts",)
    schema = GENERATIONS
    config_keys = ("generation", *MODEL_IO_KEYS)
    resumable = True
    shares_engine = True  # the θ_t engine of self_instruct, when generation.share_engine

    def resource_asks(self, config):
        from aipo_ray.resources import generation_asks

        return generation_asks(config)

    def run(self, ctx: StageContext) -> StageResult:
        import ray.data

        cfg = ctx.config.generation
        n = cfg.num_candidates
        job = ShardJob(
            prompt_ids=ctx.prompt_ids("prompts"),
            read=lambda ids: ctx.read_rows("prompts", ids[0], ids[-1]),
            build=lambda prompts: generate(ray.data.from_arrow(prompts), ctx.policy_uri, cfg,
                                           storage=ctx.config.storage,
                                           model=ctx.config.model),
            finish=partial(finish_generations, n=n), schema=GENERATIONS,
            stall=progress_deadline(cfg), rows_per_prompt=n,
        )
        totals = run_sharded(self.name, ctx, job)
        counts = totals.counts
        return StageResult(rows_in=totals.prompts, rows_out=totals.rows, extra={
            "empty": int(counts.get("empty", 0)), "truncated": int(counts.get("truncated", 0)),
            "mean_num_tokens": round(counts.get("num_tokens", 0) / max(totals.rows, 1), 3),
            "num_candidates": n, "backend": cfg.resolved_backend(),
            "shards_redone": len(totals.redone)})


def finish_generations(table: pa.Table, prompt_ids: list[str], n: int
                       ) -> tuple[pa.Table, dict[str, int]]:
    """One shard's candidates in (prompt_id, candidate_idx) order, checked, and counted."""
    table = table.select(GENERATIONS.names).cast(GENERATIONS)
    # Sorted, so the part is the same whichever replica finished first.
    table = table.sort_by([("prompt_id", "ascending"), ("candidate_idx", "ascending")])
    check_candidates(table, prompt_ids, n)
    return table, flag_counts(table)


def flag_counts(table: pa.Table) -> dict[str, int]:
    """Empty (whitespace only) and truncated responses, and the response tokens in all."""
    if table.num_rows == 0:
        return {"empty": 0, "truncated": 0, "num_tokens": 0}
    empty = pc.equal(pc.utf8_trim_whitespace(table["response"]), "")
    truncated = pc.equal(table["finish_reason"], "length")
    return {
        "empty": int(pc.sum(empty).as_py() or 0),
        "truncated": int(pc.sum(truncated).as_py() or 0),
        "num_tokens": int(pc.sum(table["num_tokens"]).as_py() or 0),
    }
