"""CommitStage: θ_{t+1} from `train/model/` to `models/iter_NNN`, then `LATEST` moves to it.

The staged model is verified against its manifest first, so a corrupted staging copy is never
committed: the stage raises `DamagedInput` and the driver trains again. The previous model is
never deleted: it is this iteration's reference and may be someone's serving checkpoint.
"""

from __future__ import annotations

from aipo_ray.pipeline.stage import DamagedInput, Stage, StageContext, StageResult
from aipo_ray.storage.checkpoint import CheckpointError, commit_checkpoint, materialize_checkpoint


class CommitStage(Stage):
    name = "commit"
    inputs = ("train",)
    commits_model = True
    reusable = False  # its output is models/iter_NNN and LATEST, not its directory

    def run(self, ctx: StageContext) -> StageResult:
        try:
            local = materialize_checkpoint(ctx.run_dir.staged_model_uri(ctx.iteration),
                                           ctx.config.storage)
        except CheckpointError as e:  # storage damaged it after train's _SUCCESS: train again
            raise DamagedInput("train", str(e)) from e
        uri = commit_checkpoint(local, ctx.run_dir, ctx.iteration)  # == ctx.output_model_uri
        return StageResult(rows_in=0, rows_out=0, extra={"model_uri": uri,
                                                         "latest": ctx.run_dir.latest_model()})
