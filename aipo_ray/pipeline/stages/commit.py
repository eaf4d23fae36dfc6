"""CommitStage: θ_{t+1} from `train/model/` to `models/iter_NNN`, then `LATEST` moves to it.

The staged model is checked against its manifest first, so a corrupted staging copy is never
committed: the stage raises `DamagedInput` and the driver trains again. Its bytes are not written
again: the staging directory is renamed (local) or copied server-side (S3) onto the target, which
keeps its manifest and so its identity (aipo_ray.storage.promote); a re-run after that finds the
model at the target by the promotion note. The previous model is never deleted: it is this
iteration's reference and may be someone's serving checkpoint.
"""

from __future__ import annotations

from aipo_ray.pipeline.stage import DamagedInput, Stage, StageContext, StageResult
from aipo_ray.storage.checkpoint import CheckpointError, move_latest
from aipo_ray.storage.promote import locate_staged, promote_checkpoint


class CommitStage(Stage):
    name = "commit"
    inputs = ("train",)
    commits_model = True
    reusable = False  # its output is models/iter_NNN and LATEST, not its directory

    def run(self, ctx: StageContext) -> StageResult:
        rd, storage = ctx.run_dir, ctx.config.storage
        staged, target = rd.staged_model_uri(ctx.iteration), rd.model_uri(ctx.iteration)
        try:
            source = locate_staged(staged, target, storage)
        except CheckpointError as e:  # storage damaged it after train's _SUCCESS: train again
            raise DamagedInput("train", str(e)) from e
        how = promote_checkpoint(source, staged, target, storage)
        move_latest(rd, ctx.iteration)
        return StageResult(rows_in=0, rows_out=0, extra={
            "model_uri": target, "latest": rd.latest_model(), "promoted": how,
            "manifest_sha256": source.sha256})
