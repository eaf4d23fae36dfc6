"""RefLogpsStage: log π_ref of each pair's chosen and rejected response under θ_t, once.

The computation lives in aipo_ray.training.reference (Ray Data actors sharing the trainer's
tokenisation and log-prob code). Reference-free losses have no such stage: the driver asks
`needs_reference` and leaves it out.
"""

from __future__ import annotations

from aipo_ray.pipeline.stage import StageContext, StageResult
from aipo_ray.training.reference import compute_ref_logps
from aipo_ray.training.trainer import needs_reference

__all__ = ["RefLogpsStage", "needs_reference"]


class RefLogpsStage:
    name = "ref_logps"
    inputs = ("pairs",)
    # `model` too: its chat_template decides which tokens are scored.
    config_keys = ("training", "reference", "model")

    def run(self, ctx: StageContext) -> StageResult:
        pairs = ctx.read("pairs")
        table = compute_ref_logps(ctx.config, pairs, ctx.policy_uri)
        ctx.write(self.name, table)
        return StageResult(rows_in=pairs.num_rows, rows_out=table.num_rows,
                           extra={"reference": ctx.policy_uri})
