"""RankStage: score each prompt's N candidates and name the best and the worst.

The generations table has one row per candidate; the ranker wants one row per prompt holding
all N responses in candidate_idx order, so the stage groups them before the actor pool runs.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from aipo_ray.pipeline.stage import POLICY, PolicyStage, StageContext, StageResult
from aipo_ray.ranking import RankBatch, rank_map_kwargs
from aipo_ray.runtime import init_ray
from aipo_ray.storage.schemas import RANKINGS

ScoreFn = Callable[[str, list[str]], "list[float]"]


class RankStage(PolicyStage):
    """Ranks with the configured backend, or with `ranker`, a Python function
    `(prompt, candidates) -> scores` given directly (custom DAGs; it must pickle)."""

    name = "rankings"
    inputs = ("generations",)
    schema = RANKINGS
    config_keys = ("ranking",)

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
        import ray

        grouped = group_candidates(ctx.read("generations"))
        if grouped.num_rows == 0:
            ctx.write(self.name, RANKINGS.empty_table())
            return StageResult(rows_in=0, rows_out=0)
        init_ray(ctx.config.ray)
        cfg = ctx.config.ranking
        kwargs = rank_map_kwargs(cfg, ctx.policy_uri, ctx.config.storage)
        if self.ranker is not None:
            kwargs["fn_constructor_kwargs"] = {**kwargs["fn_constructor_kwargs"],
                                               "score_fn": self.ranker}
        ds = ray.data.from_arrow(grouped).map_batches(RankBatch, **kwargs)
        blocks = [b for b in ray.get(ds.to_arrow_refs()) if b.num_rows]
        table = pa.concat_tables(blocks).sort_by("prompt_id") if blocks else RANKINGS.empty_table()
        ctx.write(self.name, table.select(RANKINGS.names).cast(RANKINGS))
        return StageResult(rows_in=grouped.num_rows, rows_out=table.num_rows,
                           extra={"backend": "callable" if self.ranker else cfg.backend,
                                  "mode": cfg.mode})


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
