"""A run directory whose iteration 1 is committed and iteration 2's trained model is staged.

The checkpoint-fault tests start here: `LATEST` names iter_001, `iter_002/train` has a valid
`_SUCCESS` and a staged model, and only the commit of θ_2 is left. `StagedTrain` stands in for
the trainer (its output is a copy of the tiny Llama plus an optional big file), so a resume can be
checked to skip it and redo only the commit.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from aipo_ray.config import RunConfig, StorageConfig, build_config
from aipo_ray.pipeline import Stage, StageContext, StageResult, run_stage
from aipo_ray.pipeline.stages.commit import CommitStage
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import commit_checkpoint, upload_checkpoint


class StagedTrain(Stage):
    """The train stage's contract without training: `train/model/` committed from `source`."""

    name = "train"
    inputs = ()
    config_keys = ("training",)

    def __init__(self, source: str):
        self.source = source

    def run(self, ctx: StageContext) -> StageResult:
        upload_checkpoint(self.source, ctx.run_dir.staged_model_uri(ctx.iteration), ctx.config.storage)
        return StageResult(rows_in=0, rows_out=0)


def run_config(model_dir: str, run_dir: str, storage: StorageConfig | None = None) -> RunConfig:
    config = build_config({"name": "faults", "run_dir": run_dir, "model": {"path": model_dir}})
    return config.model_copy(update={"storage": storage or StorageConfig()})


def staged_copy(model_dir: str, target: Path, big_bytes: int = 0) -> str:
    """A writable copy of the model; `big_bytes` adds a file that takes a while to upload."""
    shutil.copytree(model_dir, target)
    if big_bytes:
        # Sorts between generation_config.json and model.safetensors: uploaded mid-way.
        (target / "m_big.bin").write_bytes(os.urandom(big_bytes))
    return str(target)


def prepare(config: RunConfig, staged: str) -> StageContext:
    """iter_001 committed (LATEST), iter_002's train stage done; returns iteration 2's context."""
    rd = RunDir(config.resolved_run_dir, config.storage)
    commit_checkpoint(config.model.path, rd, 1)
    ctx = StageContext(config=config, run_dir=rd, iteration=2)
    run_stage(StagedTrain(staged), ctx)
    return ctx


def resume_commit(ctx: StageContext, staged: str) -> dict[str, dict]:
    """What a resumed driver does for iteration 2: train (should skip), then commit."""
    return {s.name: run_stage(s, ctx) for s in (StagedTrain(staged), CommitStage())}


if __name__ == "__main__":  # child process: commit iteration 2 of the run in argv[1]
    from aipo_ray.config import load_config

    cfg = load_config(sys.argv[1])
    run_stage(CommitStage(), StageContext(cfg, RunDir(cfg.resolved_run_dir, cfg.storage), 2))
