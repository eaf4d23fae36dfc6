"""RankStage: score each prompt's N candidates and name the best and the worst.

The generations table has one row per candidate; the ranker wants one row per prompt holding
all N responses in candidate_idx order, so the stage groups them, one shard of prompts at a time
(`storage.shard_size`), before the actor pool runs.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from aipo_ray.pipeline.sharded import ShardJob, run_sharded
from aipo_ray.pipeline.stage import (
    MODEL_IO_KEYS,
    POLICY,
    PolicyStage,
    StageContext,
    StageResult,
)
from aipo_ray.storage.schemas import RANKINGS_OUT
from aipo_ray.storage.shards import check_each_once

ScoreFn = Callable[[str, list[str]], "list[float]"]


class RankStage(PolicyStage):
    """Ranks with the configured backend, or with `ranker`, a Python function
    `(prompt, candidates) -> scores` given directly (custom DAGs; it must pickle)."""

    name = "rankings"
    inputs = ("generations",)
    schema = RANKINGS_OUT
    # How θ_t is read matters when it judges itself; otherwise the generations it ranks changed
    # with those keys anyway.
    config_keys = ("ranking", *MODEL_IO_KEYS)
    resumable = True  # sharded by prompt like `generations`

    def __init__(self, ranker: ScoreFn | None = None):
        self.ranker = ranker

    def models(self, ctx: StageContext) -> dict[str, str]:
        """θ_t only when the policy judges itself; another ranker is in `ranking.model`."""
        cfg = ctx.config.ranking
        judges_itself = self.ranker is None and cfg.backend == "llm_judge" and cfg.model == POLICY
        return super().models(ctx) if judges_itself else {}

    def resource_asks(self, config):
        from aipo_ray.resources import ranking_asks

        return ranking_asks(config)

    def fingerprint_extra(self, ctx: StageContext) -> str | None:
        fn = self.ranker
        return None if fn is None else f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', fn)}"

    def run(self, ctx: StageContext) -> StageResult:
        # Imported here, not at the top: the shard writer task imports this module for
        # `finish_rankings`, and the rankers' torch would add about 2.5 s to its cold start.
        import ray.data

        from aipo_ray.ranking import rank_pool

        cfg = ctx.config.ranking
        job = ShardJob(
            prompt_ids=ctx.prompt_ids("generations"),
            read=lambda ids: group_candidates(ctx.read_rows("generations", ids[0], ids[-1])),
            build=lambda grouped: rank_pool(ray.data.from_arrow(grouped), cfg, ctx.policy_uri,
                                            ctx.config.storage, score_fn=self.ranker,
                                            model=ctx.config.model),
            finish=finish_rankings, schema=RANKINGS_OUT,
        )
        totals = run_sharded(self.name, ctx, job)
        return StageResult(rows_in=totals.prompts, rows_out=totals.rows,
                           extra={"backend": "callable" if self.ranker else cfg.backend,
                                  "mode": cfg.mode, "shards_redone": len(totals.redone),
                                  # prompts the ranker refused; pairs/_rejected/ has each reason
                                  "refused": int(totals.counts.get("refused", 0))})


def finish_rankings(table: pa.Table, prompt_ids: list[str]) -> tuple[pa.Table, dict]:
    """One shard's rankings in prompt_id order, each prompt exactly once; counts the prompts the
    ranker refused."""
    table = table.select(RANKINGS_OUT.names).cast(RANKINGS_OUT).sort_by("prompt_id")
    check_each_once(table, prompt_ids, "rankings")
    return table, {"refused": table.num_rows - table.column("rejection").null_count}


def group_candidates(generations: pa.Table) -> pa.Table:
    """One row per prompt: prompt_id, prompt, candidates (responses in candidate_idx order)."""
    if generations.num_rows == 0:
        return pa.table({"prompt_id": pa.array([], pa.string()), "prompt": pa.array([], pa.string()),
                         "candidates": pa.array([], pa.list_(pa.string()))})
    ordered = generations.sort_by([("prompt_id", "ascending"), ("candidate_idx", "ascending")])
    grouped = ordered.group_by("prompt_id", use_threads=False).aggregate(
        [("prompt", "first"), ("response", "list")]
    )
    return pa.table({
        "prompt_id": grouped["prompt_id"], "prompt": grouped["prompt_first"],
        "candidates": grouped["response_list"],
    }).sort_by("prompt_id")
