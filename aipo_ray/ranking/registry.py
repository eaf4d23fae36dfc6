"""Ranking backends by name: `@register_ranker("name")` on a builder `(cfg, ctx) -> Ranker`.

A backend is one module: a builder that takes the `ranking` config section and a
`RankerContext` (θ_t's path, the device, storage and the run's `model` section) and returns a
`Ranker`, plus an optional `check(cfg)` run when a config is validated. `ranking.backend` is
checked against the registered names; `ranking.options` carries settings of backends that are
not aipo-ray's own. See docs/ranking.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aipo_ray.registry import Registry

if TYPE_CHECKING:
    import torch

    from aipo_ray.config import ModelConfig, RankingConfig, StorageConfig

    from .base import Ranker


@dataclass(frozen=True)
class RankerContext:
    """Where a ranker runs and what it may need besides its own config section."""

    policy_model_path: str | None = None  # θ_t, for judges that judge with the policy
    device: str = "cpu"
    storage: StorageConfig | None = None
    model: ModelConfig | None = None  # the run's `model` section: how θ_t is read

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def dtype(self, cfg: RankingConfig, gpu_default: torch.dtype) -> torch.dtype:
        """`ranking.dtype` when set; else float32 on CPU and `gpu_default` on a GPU."""
        import torch

        if cfg.dtype != "auto":
            return getattr(torch, cfg.dtype)
        return gpu_default if self.on_gpu else torch.float32


RankerBuilder = Callable[["RankingConfig", RankerContext], "Ranker"]

RANKERS: Registry[RankerBuilder] = Registry(
    "ranking backend",
    builtin_modules=(
        "aipo_ray.ranking.pairrm",
        "aipo_ray.ranking.llm_judge",
        "aipo_ray.ranking.http_judge",
        "aipo_ray.ranking.python_fn",
        "aipo_ray.ranking.reward_model",
    ),
    entry_point_group="aipo_ray.rankers",
)
register_ranker = RANKERS.register


def available_rankers() -> list[str]:
    return RANKERS.names()
