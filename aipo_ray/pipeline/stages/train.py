"""TrainStage: θ_t → θ_{t+1} on this iteration's pairs (Ray Train + FSDP2).

Writes `train/metrics.jsonl` (one line per optimizer step) and the trained model, with its
manifest and `_COMMITTED`, to `train/model/` inside the run directory: a driver crash after
this stage costs only the commit, which re-verifies and copies it.
"""

from __future__ import annotations

from aipo_ray.pipeline.stage import StageContext, StageResult, fingerprint
from aipo_ray.storage import iteration_name
from aipo_ray.training.trainer import needs_reference, train_policy

MODEL_DIR = "model"
METRICS = "metrics.jsonl"


def staged_model_uri(ctx: StageContext) -> str:
    return ctx.run_dir.uri_of(iteration_name(ctx.iteration), TrainStage.name, MODEL_DIR)


class TrainStage:
    name = "train"
    inputs = ("pairs", "ref_logps")
    config_keys = ("training", "loss", "model")

    def run(self, ctx: StageContext) -> StageResult:
        pairs = ctx.read("pairs")
        ref = ctx.read("ref_logps") if needs_reference(ctx.config) else None
        # Same inputs and config → same Ray Train run name, so a rerun after a driver crash
        # picks up Ray Train's last mid-epoch checkpoint instead of starting over.
        run_name = f"{ctx.config.name}-{iteration_name(ctx.iteration)}-{fingerprint(self, ctx)[:12]}"
        out = train_policy(
            ctx.config, pairs, ref, ctx.policy_uri, output_uri=staged_model_uri(ctx),
            metrics_uri=ctx.run_dir.uri_of(iteration_name(ctx.iteration), self.name, METRICS),
            run_name=run_name,
        )
        return StageResult(rows_in=pairs.num_rows, rows_out=pairs.num_rows,
                           extra={"plan": out["plan"], "steps": out["steps"],
                                  "final_metrics": out["metrics"], "model_uri": out["model_uri"]})
