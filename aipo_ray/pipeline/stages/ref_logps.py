"""RefLogpsStage: log π_ref of each pair's chosen and rejected response under θ_t, once.

The computation lives in aipo_ray.training.reference (Ray Data actors sharing the trainer's
tokenisation and log-prob code). Reference-free losses have no such stage: the driver asks
`needs_reference` and leaves it out.
"""

from __future__ import annotations

import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.pipeline.sharded import ShardJob, run_sharded
from aipo_ray.pipeline.stage import MODEL_IO_KEYS, PolicyStage, StageContext, StageResult
from aipo_ray.storage.schemas import REF_LOGPS
from aipo_ray.storage.shards import check_each_once


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
    resumable = True  # sharded by prompt (storage.shard_size pairs per part)

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        from aipo_ray.training.trainer import needs_reference

        return needs_reference(config)

    def resource_asks(self, config):
        from aipo_ray.resources import reference_asks

        return reference_asks(config)

    def run(self, ctx: StageContext) -> StageResult:
        # Imported here, not at the top: the shard writer task imports this module for
        # `finish_ref_logps`, and torch would add about 2.5 s to its cold start.
        import ray.data

        from aipo_ray.training.reference import reference_pool

        job = ShardJob(
            prompt_ids=ctx.prompt_ids("pairs"),
            read=lambda ids: ctx.read_rows("pairs", ids[0], ids[-1]),
            build=lambda pairs: reference_pool(ctx.config, ray.data.from_arrow(pairs),
                                               ctx.policy_uri),
            finish=finish_ref_logps, schema=REF_LOGPS,
        )
        totals = run_sharded(self.name, ctx, job)
        return StageResult(rows_in=totals.prompts, rows_out=totals.rows,
                           extra={"reference": ctx.policy_uri,
                                  "shards_redone": len(totals.redone)})


def finish_ref_logps(table: pa.Table, prompt_ids: list[str]) -> tuple[pa.Table, dict]:
    """One shard's reference log-probs in prompt_id order, each pair exactly once."""
    table = table.select(REF_LOGPS.names).cast(REF_LOGPS).sort_by("prompt_id")
    check_each_once(table, prompt_ids, "ref_logps")
    return table, {}
