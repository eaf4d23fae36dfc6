"""RefLogpsStage: log π_ref of each pair's chosen and rejected response under θ_t, once.

The computation lives in aipo_ray.training.reference (Ray Data actors sharing the trainer's
tokenisation and log-prob code). Reference-free losses have no such stage: the driver asks
`needs_reference` and leaves it out.
"""

from __future__ import annotations

from aipo_ray.config import RunConfig
from aipo_ray.pipeline.stage import MODEL_IO_KEYS, PolicyStage, StageContext, StageResult
from aipo_ray.storage.schemas import REF_LOGPS
from aipo_ray.training.reference import compute_ref_logps
from aipo_ray.training.trainer import needs_reference


class RefLogpsStage(PolicyStage):
    name = "ref_logps"
    inputs = ("pairs",)
    schema = REF_LOGPS
    # What decides which tokens are scored and in what precision; not the optimiser settings,
    # so variants that differ only in training share this stage.
    config_keys = (
        "training.max_prompt_length", "training.max_response_length",
        "training.mixed_precision", "reference.gpus_per_replica", *MODEL_IO_KEYS,
    )

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        return needs_reference(config)

    def resource_asks(self, config):
        from aipo_ray.resources import reference_asks

        return reference_asks(config)

    def run(self, ctx: StageContext) -> StageResult:
        pairs = ctx.read("pairs")
        table = compute_ref_logps(ctx.config, pairs, ctx.policy_uri)
        ctx.write(self.name, table)
        return StageResult(rows_in=pairs.num_rows, rows_out=table.num_rows,
                           extra={"reference": ctx.policy_uri})
