"""AdamW and the learning-rate schedule (warmup ratio, then cosine / linear decay or constant)."""

from __future__ import annotations

import math

import torch

from aipo_ray.config import TrainingConfig

_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def warmup_steps(cfg: TrainingConfig, total_steps: int) -> int:
    return math.ceil(cfg.warmup_ratio * total_steps)


def build_optimizer(params, cfg: TrainingConfig) -> torch.optim.Optimizer:
    # foreach=False: the per-parameter path handles DTensor shards on gloo and NCCL alike.
    return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                             eps=cfg.adam_eps, weight_decay=cfg.weight_decay, foreach=False)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(_SCHEDULES[cfg.lr_scheduler], optimizer,
                         num_warmup_steps=warmup_steps(cfg, total_steps),
                         num_training_steps=total_steps)
