"""Build the ranker a RankingConfig names, on the device its resources give it."""

from __future__ import annotations

import torch

from aipo_ray.config import ModelConfig, RankingConfig, StorageConfig

from .base import Ranker
from .registry import RANKERS, RankerBuilder, RankerContext

POLICY = "policy"


def pick_device(cfg: RankingConfig) -> str:
    """A GPU only when the config gives the ranker one and one is visible."""
    return "cuda" if cfg.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"


def judge_model_path(
    cfg: RankingConfig, policy_model_path: str | None, storage: StorageConfig | None = None
) -> str:
    """The judge LM: 'policy' means θ_t itself; otherwise a dir, hub name or builtin:NAME."""
    from aipo_ray.models import resolve_model_path

    if cfg.model == POLICY:
        if not policy_model_path:
            raise ValueError("ranking.model = 'policy' but no policy model path was given")
        # θ_t arrives as a run's model URI (pointer or committed checkpoint): resolve it here,
        # inside the actor, so each node fetches its own copy.
        return resolve_model_path(policy_model_path, storage)
    if cfg.model == RankingConfig.model_fields["model"].default:
        raise ValueError(
            f"ranking.backend = 'llm_judge' needs ranking.model set to a causal LM or 'policy', "
            f"not the PairRM default {cfg.model!r}"
        )
    return resolve_model_path(cfg.model, storage)


def build_ranker(
    cfg: RankingConfig, policy_model_path: str | None = None, device: str | None = None,
    storage: StorageConfig | None = None, model: ModelConfig | None = None,
    builder: RankerBuilder | None = None,
) -> Ranker:
    """The ranker `cfg.backend` names (see `registry.py`), loaded on `device` (default:
    `pick_device`); `builder` is that backend's registered builder when the caller already
    holds it (the Ray Data actors receive it from the driver).

    `model` is the run's `model` section: when θ_t judges itself (`ranking.model: policy`) it is
    read as every other stage reads it (tokenizer, chat template, trust_remote_code, and
    `model.dtype` unless `ranking.dtype` is set). Another judge model is read as it is.
    """
    ctx = RankerContext(policy_model_path, device or pick_device(cfg), storage, model)
    return (builder or RANKERS.get(cfg.backend))(cfg, ctx)
