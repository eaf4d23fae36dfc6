"""TrainStage: θ_t → θ_{t+1} on this iteration's pairs (Ray Train + FSDP2).

Writes `train/metrics.jsonl` (one line per optimizer step) and the trained model, with its
manifest and `_COMMITTED`, to `train/model/` inside the run directory: a driver crash after
this stage costs only the commit, which re-verifies it and renames it (or copies it
server-side on S3) to `models/iter_NNN`.
"""

from __future__ import annotations

from aipo_ray.pipeline.fingerprint import fingerprint
from aipo_ray.pipeline.stage import MODEL_IO_KEYS, PolicyStage, StageContext, StageResult
from aipo_ray.storage import iteration_name
from aipo_ray.training.trainer import needs_reference, train_policy

RAY_TRAIN_DIR = "_ray_train"  # Ray Train's mid-epoch checkpoints, by run name


class TrainStage(PolicyStage):
    name = "train"
    # `ref_logps` is absent for a reference-free loss: its fingerprint entry is then None.
    inputs = ("pairs", "ref_logps")
    config_keys = ("training", "loss", *MODEL_IO_KEYS)

    def resource_asks(self, config):
        from aipo_ray.resources import training_asks

        return training_asks(config)

    def run(self, ctx: StageContext) -> StageResult:
        pairs = ctx.read("pairs")
        ref = ctx.read("ref_logps") if needs_reference(ctx.config) else None
        # Same inputs and config → same Ray Train run name, so a rerun after a driver crash
        # picks up Ray Train's last mid-epoch checkpoint instead of starting over.
        run_name = f"{ctx.config.name}-{iteration_name(ctx.iteration)}-{fingerprint(self, ctx)[:12]}"
        out = train_policy(
            ctx.config, pairs, ref, ctx.policy_uri,
            output_uri=ctx.run_dir.staged_model_uri(ctx.iteration),
            metrics_uri=ctx.run_dir.train_metrics_uri(ctx.iteration),
            run_name=run_name,
            # Under the run directory (outside the stage's own, which a rerun clears): every
            # node reaches it, and a resumed run finds Ray Train's last checkpoint there.
            storage_path=ctx.run_dir.uri_of(RAY_TRAIN_DIR),
        )
        return StageResult(rows_in=pairs.num_rows, rows_out=pairs.num_rows,
                           extra={"plan": out["plan"], "steps": out["steps"],
                                  "final_metrics": out["metrics"], "model_uri": out["model_uri"]})
