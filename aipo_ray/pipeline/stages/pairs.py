"""PairsStage: (chosen, rejected) = best and worst candidate of each prompt under the ranker.

The rules live in aipo_ray.data.pairs. Refused prompts (too few usable candidates, ties, small
gaps, equal texts) go to `_rejected/` with their reason; candidates dropped before choosing (cut at
max_tokens, empty) are counted in `extra.dropped_candidates`, and prompts beyond `max_pairs` in
`extra.surplus`.
"""

from __future__ import annotations

from aipo_ray.data.pairs import select_pairs
from aipo_ray.pipeline.stage import Stage, StageContext, StageResult
from aipo_ray.storage import rejected_rows


class PairsStage(Stage):
    name = "pairs"
    inputs = ("generations", "rankings")
    config_keys = ("pairs",)

    def run(self, ctx: StageContext) -> StageResult:
        result = select_pairs(ctx.read("generations"), ctx.read("rankings"), ctx.config.pairs)
        if result.rejected:
            ctx.write_rejected(self.name, rejected_rows(result.rejected, source="rankings"))
        ctx.write(self.name, result.table)
        return StageResult(
            rows_in=result.rows_in, rows_out=result.table.num_rows,
            rejected=result.rejected_counts,
            extra={"surplus": result.surplus, "dropped_candidates": result.dropped_candidates},
        )
