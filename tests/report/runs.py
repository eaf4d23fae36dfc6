"""Hand-made run directories that follow the stage contracts, written through the real stage runner.

Each iteration's tables are built from a seeded RNG; chosen responses grow longer with the
iteration (the length exploitation the report must show).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.pipeline import Stage, StageContext, StageResult, run_stage
from aipo_ray.pipeline.stages.stats import StatsStage
from aipo_ray.storage import RunDir, make_prompt_id, rejected_rows

WORDS = ["the", "a", "model", "answer", "reply", "step", "list", "item", "detail", "example", "reason", "note", "point", "fact"]


def _text(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def iteration_tables(iteration: int, num_prompts: int = 12, n: int = 4, seed: int = 0) -> dict:
    """Tables of one iteration: chosen is the longest candidate, more so in later iterations."""
    rng = np.random.default_rng(seed + iteration)
    prompts = [f"question {i} of iteration {iteration}: explain topic {i}" for i in range(num_prompts)]
    ids = [make_prompt_id(p) for p in prompts]
    gen_rows, rank_rows, pair_rows, ref_rows = [], [], [], []
    for pid, prompt in zip(ids, prompts, strict=True):
        lengths = rng.integers(5, 20, size=n) + 10 * (iteration - 1) * np.arange(n)
        responses = [_text(rng, int(k)) for k in lengths]
        for j, (resp, k) in enumerate(zip(responses, lengths, strict=True)):
            gen_rows.append(dict(prompt_id=pid, prompt=prompt, candidate_idx=j, response=resp,
                                 num_tokens=int(k), finish_reason="stop"))
        scores = [float(k) + rng.normal() for k in lengths]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        rank_rows.append(dict(prompt_id=pid, scores=scores, best_idx=best, worst_idx=worst))
        pair_rows.append(dict(prompt_id=pid, prompt=prompt, chosen=responses[best],
                              rejected=responses[worst], chosen_score=scores[best],
                              rejected_score=scores[worst]))
        # The reference prefers the shorter response most of the time, as in paper Fig. 5.
        ref_rows.append(dict(prompt_id=pid, ref_chosen_logp=-1.1 * float(lengths[best]) + rng.normal(),
                             ref_rejected_logp=-1.0 * float(lengths[worst]) + rng.normal(),
                             chosen_len=int(lengths[best]), rejected_len=int(lengths[worst])))
    prompt_rows = [dict(prompt_id=i, prompt=p, source="seed" if k % 3 else "self_instruct",
                        iteration=iteration) for k, (i, p) in enumerate(zip(ids, prompts, strict=True))]
    return {"prompts": prompt_rows, "generations": gen_rows, "rankings": rank_rows,
            "pairs": pair_rows, "ref_logps": ref_rows}


def train_metrics(iteration: int, steps: int = 5) -> list[dict]:
    return [
        {"step": s, "loss": 0.69 - 0.05 * s, "rewards/chosen": -0.01 * s * iteration,
         "rewards/rejected": -0.03 * s * iteration, "rewards/margins": 0.02 * s * iteration,
         "rewards/accuracies": min(1.0, 0.5 + 0.1 * s), "nll": 1.2 - 0.01 * s,
         "logps/chosen": -50.0 - s, "logps/rejected": -60.0 - 2 * s, "lr": 1e-6, "grad_norm": 1.0}
        for s in range(1, steps + 1)
    ]


class TableStage(Stage):
    """Writes one hand-made table; `rejected` rows go to `_rejected/` like a real filter's."""

    def __init__(self, name: str, rows: list[dict], rejected: list[dict] | None = None,
                 inputs: tuple[str, ...] = ()):
        self.name, self.rows, self.rejected, self.inputs = name, rows, rejected or [], inputs

    def run(self, ctx: StageContext) -> StageResult:
        ctx.write(self.name, pa.Table.from_pylist(self.rows))
        counts: dict[str, int] = {}
        if self.rejected:
            ctx.write_rejected(self.name, rejected_rows(self.rejected))
            for r in self.rejected:
                counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        return StageResult(rows_in=len(self.rows) + len(self.rejected), rows_out=len(self.rows),
                           rejected=counts)


class MetricsStage(Stage):
    name = "train"
    inputs = ("pairs", "ref_logps")

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def run(self, ctx: StageContext) -> StageResult:
        body = "".join(json.dumps(r) + "\n" for r in self.rows).encode()
        path = ctx.run_dir.iteration_path(ctx.iteration, "train", "metrics.jsonl")
        ctx.run_dir.fs.makedirs(ctx.stage_path("train"), exist_ok=True)
        ctx.run_dir.fs.pipe_file(path, body)
        return StageResult(rows_in=len(self.rows), rows_out=len(self.rows))


def build_run(root: str, iterations: int = 2, storage=None, stats: bool = True,
              train: bool = True, seed: int = 0) -> RunDir:
    """A run directory with `iterations` finished iterations of hand-made tables (`seed` varies
    them, as between the variants of a sweep)."""
    config = RunConfig.model_validate({"name": "hand-made", "run_dir": root,
                                       "model": {"path": "builtin:smollm2-135m-instruct"},
                                       **({"storage": storage.model_dump()} if storage else {})})
    rd = RunDir(root, config.storage)
    rd.write_json("run.json", {"config": config.to_public_dict(), "started_at":
                               "2026-01-01T00:00:00+00:00"})
    for it in range(1, iterations + 1):
        tables = iteration_tables(it, seed=seed)
        bad = [{"prompt_id": "x", "reason": "too_short", "prompt": "hi"},
               {"prompt_id": "y", "reason": "blocked_keyword", "prompt": "draw a graph"}]
        chain = [TableStage("prompts", tables["prompts"], rejected=bad),
                 TableStage("generations", tables["generations"], inputs=("prompts",)),
                 TableStage("rankings", tables["rankings"], inputs=("generations",)),
                 TableStage("pairs", tables["pairs"], inputs=("rankings",)),
                 TableStage("ref_logps", tables["ref_logps"], inputs=("pairs",))]
        if train:
            chain.append(MetricsStage(train_metrics(it)))
        if stats:
            chain.append(StatsStage())
        ctx = StageContext(config=config, run_dir=rd, iteration=it)
        for stage in chain:
            run_stage(stage, ctx)
    return rd
