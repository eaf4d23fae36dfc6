"""The ranker as a Ray Data callable class: one loaded model per actor, batches of prompts in.

    ranked = rank_pool(ds, cfg, policy_path)

Input rows: prompt_id, prompt, candidates (a prompt's N responses as one list). Output rows follow
the rankings contract (aipo_ray.storage.schemas.RANKINGS_OUT): prompt_id, scores (list of N floats,
higher is better), best_idx, worst_idx, rejection. A prompt with no candidates gets scores [] and
indices -1 rather than failing the whole dataset; the pairs stage drops it like a tie. A prompt the
ranker refused (`Ranking.rejections`: a judge's unreadable reply) gets indices -1, null for the
scores it lacks, and the reason in `rejection`; the pairs stage puts it in `_rejected/`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from aipo_ray.actor_pool import PoolSpec, map_pool
from aipo_ray.config import ModelConfig, RankingConfig, StorageConfig
from aipo_ray.storage.schemas import RANKINGS_OUT

from .build import build_ranker
from .python_fn import CallableRanker
from .registry import RANKERS, RankerBuilder

if TYPE_CHECKING:
    import ray.data

INPUT_COLUMNS = ("prompt_id", "prompt", "candidates")


class RankBatch:
    """Loads the configured ranker once per actor; ranks each batch grouped by candidate count."""

    def __init__(
        self,
        ranking: RankingConfig | dict,
        policy_model_path: str | None = None,
        device: str | None = None,
        score_fn: Any = None,
        storage: StorageConfig | dict | None = None,
        model: ModelConfig | None = None,
        builder: RankerBuilder | None = None,
    ):
        # `builder` is the registered builder the driver looked up; unpickling it here imports
        # its module, which registers a ranker defined outside aipo_ray before the config below
        # is validated against the registry.
        cfg = ranking if isinstance(ranking, RankingConfig) else RankingConfig.model_validate(ranking)
        # `score_fn` is a user's function object passed from Python (custom DAGs); it wins
        # over the configured backend.
        if score_fn is not None:
            self.ranker = CallableRanker(score_fn)
            return
        if isinstance(storage, dict):
            storage = StorageConfig.model_validate(storage)
        self.ranker = build_ranker(cfg, policy_model_path, device=device, storage=storage,
                                   model=model, builder=builder)

    def __call__(self, batch: Any) -> pa.Table:
        columns = _columns(batch)
        prompts, candidates = columns["prompt"], columns["candidates"]
        scores: list[list[float]] = [[] for _ in prompts]
        best = np.full(len(prompts), -1, dtype=np.int32)
        worst = np.full(len(prompts), -1, dtype=np.int32)
        rejection: list[str | None] = [None] * len(prompts)
        by_size: dict[int, list[int]] = defaultdict(list)
        for row, cands in enumerate(candidates):
            if cands:
                by_size[len(cands)].append(row)
        for rows in by_size.values():
            ranking = self.ranker.best_worst([prompts[r] for r in rows], [candidates[r] for r in rows])
            refused = ranking.rejections or [None] * len(rows)
            for k, row in enumerate(rows):
                scores[row] = [float(x) if np.isfinite(x) else None for x in ranking.scores[k]]
                best[row], worst[row] = ranking.best_idx[k], ranking.worst_idx[k]
                if refused[k] is not None:
                    best[row] = worst[row] = -1
                    rejection[row] = refused[k]
        return pa.table(
            {"prompt_id": columns["prompt_id"], "scores": scores, "best_idx": best,
             "worst_idx": worst, "rejection": rejection},
            schema=RANKINGS_OUT,
        )


def _columns(batch: Any) -> dict[str, list]:
    """Python lists of the input columns from a pyarrow, pandas or numpy-dict batch."""
    if isinstance(batch, pa.Table):
        data = {name: batch.column(name).to_pylist() for name in INPUT_COLUMNS if name in batch.column_names}
    else:
        data = {name: list(batch[name]) for name in INPUT_COLUMNS if name in batch}
    missing = [name for name in INPUT_COLUMNS if name not in data]
    if missing:
        raise KeyError(f"ranking input lacks column(s) {missing}; expected {list(INPUT_COLUMNS)}")
    data["candidates"] = [[str(c) for c in cands] if cands is not None else [] for cands in data["candidates"]]
    data["prompt"] = [str(p) for p in data["prompt"]]
    return data


def rank_pool(
    ds: ray.data.Dataset, cfg: RankingConfig, policy_model_path: str | None = None,
    storage: StorageConfig | None = None, score_fn: Any = None, model: ModelConfig | None = None,
) -> ray.data.Dataset:
    """`ds` ranked by `cfg.num_replicas` RankBatch actors with the ranking section's resources,
    deadline and restart policy (aipo_ray.actor_pool); `score_fn` as in RankBatch; `model` (the
    run's `model` section) applies when θ_t judges itself (`ranking.model: policy`)."""
    return map_pool(ds, RankBatch, PoolSpec.of("ranking", cfg), RANKINGS_OUT,
                    ranking=cfg.model_dump(), policy_model_path=policy_model_path,
                    storage=storage, score_fn=score_fn, model=model,
                    builder=None if score_fn is not None else RANKERS.get(cfg.backend))
