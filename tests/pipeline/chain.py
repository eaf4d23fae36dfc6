"""A small real chain for runtime tests: a fixed prompt pool, a stage that reads θ_t, a train
stand-in that stages a real model whose bytes follow `training.learning_rate`, and the real
CommitStage. Every stage counts its runs, so a test sees exactly what the driver executed."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa

from aipo_ray.pipeline import PolicyStage, Stage, StageContext, StageResult
from aipo_ray.pipeline.stages.commit import CommitStage
from aipo_ray.storage import make_prompt_id
from aipo_ray.storage.checkpoint import upload_checkpoint
from aipo_ray.storage.schemas import GENERATIONS, PROMPTS

PROMPTS_TEXT = ["Name a prime number.", "Say hello in French.", "What is 2 + 2?"]


class FixedPrompts(Stage):
    """A prompt pool that no model reads: a recommitted θ_t must leave it done."""

    name = "prompts"
    schema = PROMPTS
    config_keys = ("prompts", "seed")

    def __init__(self, runs: Counter):
        self.runs = runs

    def run(self, ctx: StageContext) -> StageResult:
        self.runs[(ctx.iteration, self.name)] += 1
        ctx.write(self.name, pa.table({
            "prompt_id": [make_prompt_id(t) for t in PROMPTS_TEXT], "prompt": PROMPTS_TEXT,
            "source": ["test"] * len(PROMPTS_TEXT), "iteration": [ctx.iteration] * 3,
        }, schema=PROMPTS))
        return StageResult(rows_in=3, rows_out=3)


class EchoGenerate(PolicyStage):
    """Reads θ_t (by declaration) and writes one candidate per prompt."""

    name = "generations"
    inputs = ("prompts",)
    schema = GENERATIONS
    config_keys = ("generation",)

    def __init__(self, runs: Counter):
        self.runs = runs

    def run(self, ctx: StageContext) -> StageResult:
        self.runs[(ctx.iteration, self.name)] += 1
        prompts = ctx.read("prompts")
        n = prompts.num_rows
        ctx.write(self.name, pa.table({
            "prompt_id": prompts["prompt_id"], "prompt": prompts["prompt"],
            "candidate_idx": [0] * n, "response": ["ok"] * n, "num_tokens": [1] * n,
            "finish_reason": ["stop"] * n,
        }, schema=GENERATIONS))
        return StageResult(rows_in=n, rows_out=n)


class StagedTrain(PolicyStage):
    """Stages `model_dir` plus a file holding the learning rate, like a training run whose
    weights depend on it; the real CommitStage then commits it as θ_{t+1}."""

    name = "train"
    inputs = ("generations",)
    config_keys = ("training",)

    def __init__(self, runs: Counter, model_dir: str):
        self.runs, self.model_dir = runs, model_dir

    def run(self, ctx: StageContext) -> StageResult:
        self.runs[(ctx.iteration, self.name)] += 1
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "model"
            shutil.copytree(self.model_dir, staged)
            (staged / "trained.txt").write_text(
                f"iteration {ctx.iteration} lr {ctx.config.training.learning_rate}")
            upload_checkpoint(staged, ctx.run_dir.staged_model_uri(ctx.iteration),
                              ctx.config.storage)
        return StageResult(rows_in=0, rows_out=0)


class CountedCommit(CommitStage):
    def __init__(self, runs: Counter):
        self.runs = runs

    def run(self, ctx: StageContext) -> StageResult:
        self.runs[(ctx.iteration, self.name)] += 1
        return super().run(ctx)


def chain(runs: Counter, model_dir: str):
    """A stage factory for `driver.run(..., stages=...)`."""
    return lambda config, iteration: [FixedPrompts(runs), EchoGenerate(runs),
                                      StagedTrain(runs, model_dir), CountedCommit(runs)]
