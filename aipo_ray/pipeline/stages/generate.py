"""GenerateStage: N candidate responses per prompt with θ_t, the table the ranker scores.

Empty and truncated (finish_reason 'length') responses stay in the table, because the ranking
sees all N candidates of a prompt; the stage counts them in `_SUCCESS` (`extra.empty`,
`extra.truncated`) and the pairs stage drops them by rule.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from aipo_ray.generation import check_candidates, generate
from aipo_ray.pipeline.stage import MODEL_IO_KEYS, PolicyStage, StageContext, StageResult
from aipo_ray.runtime import init_ray
from aipo_ray.storage.schemas import GENERATIONS

# Prompts per part file; a prompt's N candidates never straddle two parts.
PROMPTS_PER_PART = 1024


class GenerateStage(PolicyStage):
    name = "generations"
    inputs = ("prompts",)
    schema = GENERATIONS
    config_keys = ("generation", *MODEL_IO_KEYS)

    def resource_asks(self, config):
        from aipo_ray.resources import generation_asks

        return generation_asks(config)

    def run(self, ctx: StageContext) -> StageResult:
        import ray.data

        prompts = ctx.read("prompts").select(["prompt_id", "prompt"])
        cfg = ctx.config.generation
        n = cfg.num_candidates
        if prompts.num_rows:
            init_ray(ctx.config.ray)
            out = generate(ray.data.from_arrow(prompts), ctx.policy_uri, cfg,
                           storage=ctx.config.storage)
            table = collect(out)
        else:
            table = GENERATIONS.empty_table()
        # Sorted, so part files are the same whichever replica finished first.
        table = table.sort_by([("prompt_id", "ascending"), ("candidate_idx", "ascending")])
        check_candidates(table, prompts["prompt_id"].to_pylist(), n)
        for part, start in enumerate(range(0, max(table.num_rows, 1), PROMPTS_PER_PART * n)):
            ctx.write(self.name, table.slice(start, PROMPTS_PER_PART * n), part=part)
        return StageResult(rows_in=prompts.num_rows, rows_out=table.num_rows,
                           extra={**flag_counts(table), "num_candidates": n,
                                  "backend": cfg.resolved_backend()})


def collect(ds) -> pa.Table:
    """A finished Dataset as one Arrow table in the GENERATIONS column order and types."""
    import ray

    blocks = [b for b in ray.get(ds.to_arrow_refs()) if b.num_rows]
    if not blocks:
        return GENERATIONS.empty_table()
    table = pa.concat_tables(blocks, promote_options="default")
    return table.select(GENERATIONS.names).cast(GENERATIONS)


def flag_counts(table: pa.Table) -> dict[str, float | int]:
    """Empty (whitespace only) and truncated responses, and the mean response length in tokens."""
    if table.num_rows == 0:
        return {"empty": 0, "truncated": 0, "mean_num_tokens": 0.0}
    empty = pc.equal(pc.utf8_trim_whitespace(table["response"]), "")
    truncated = pc.equal(table["finish_reason"], "length")
    return {
        "empty": int(pc.sum(empty).as_py() or 0),
        "truncated": int(pc.sum(truncated).as_py() or 0),
        "mean_num_tokens": round(float(pc.mean(table["num_tokens"]).as_py()), 3),
    }
