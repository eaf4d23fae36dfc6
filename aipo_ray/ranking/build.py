"""Pick and load the ranker a RankingConfig names."""

from __future__ import annotations

import torch

from aipo_ray.config import ModelConfig, RankingConfig, StorageConfig

from .base import PairwiseRanker, Ranker
from .python_fn import CallableRanker

POLICY = "policy"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(cfg: RankingConfig) -> str:
    """A GPU only when the config gives the ranker one and one is visible."""
    return "cuda" if cfg.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"


def _dtype(cfg: RankingConfig, device: str, gpu_default: torch.dtype) -> torch.dtype:
    if cfg.dtype != "auto":
        return _DTYPES[cfg.dtype]
    return gpu_default if device.startswith("cuda") else torch.float32


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
) -> Ranker:
    """The `pairrm`, `llm_judge` or `callable` backend, loaded on `device` (default: see pick_device).

    `model` is the run's `model` section: when θ_t judges itself (`ranking.model: policy`) it is
    read as every other stage reads it (tokenizer, chat template, trust_remote_code, and
    `model.dtype` unless `ranking.dtype` is set). Another judge model is read as it is.
    """
    device = device or pick_device(cfg)
    if cfg.backend == "pairrm":
        from .pairrm import PairRM

        rm = PairRM.from_pretrained(
            cfg.model, backbone=cfg.backbone, device=device,
            dtype=_dtype(cfg, device, torch.float16), batch_size=cfg.pair_batch_size,
        )
        return PairwiseRanker(rm.compare_pairs, cfg.mode)
    if cfg.backend == "llm_judge":
        from aipo_ray.models import resolve_dtype

        from .llm_judge import LLMJudge

        policy = model if cfg.model == POLICY else None
        judge = LLMJudge.from_pretrained(
            judge_model_path(cfg, policy_model_path, storage), device=device,
            dtype=resolve_dtype(policy, device.startswith("cuda"), cfg.dtype),
            model=policy, storage=storage, batch_size=cfg.pair_batch_size,
            max_prompt_tokens=cfg.judge_max_prompt_tokens,
            max_response_tokens=cfg.judge_max_response_tokens,
        )
        return PairwiseRanker(judge.compare_pairs, cfg.mode)
    if cfg.backend == "callable":
        return CallableRanker(cfg.callable)
    raise ValueError(f"unknown ranking backend {cfg.backend!r}")
