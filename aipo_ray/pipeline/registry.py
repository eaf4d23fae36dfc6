"""The default stages of an iteration, in pipeline order: the one list the driver runs and that
`aipo status`, the report and `collect` read to order what they show.

Adding a stage: write its `Stage` subclass in `pipeline/stages/<name>.py` and put the class here
at its place in the order; `enabled(config)` decides whether a config's chain includes it.
"""

from __future__ import annotations

from functools import cache

from aipo_ray.config import RunConfig

from .stage import Stage


@cache
def default_stage_classes() -> tuple[type[Stage], ...]:
    """self-instruct → prompts (filters) → generate → rank → pairs → ref_logps → train → commit
    → stats."""
    from .stages.commit import CommitStage
    from .stages.generate import GenerateStage
    from .stages.pairs import PairsStage
    from .stages.prompts import PromptsStage
    from .stages.rank import RankStage
    from .stages.ref_logps import RefLogpsStage
    from .stages.self_instruct import SelfInstructStage
    from .stages.stats import StatsStage
    from .stages.train import TrainStage

    return (SelfInstructStage, PromptsStage, GenerateStage, RankStage, PairsStage, RefLogpsStage,
            TrainStage, CommitStage, StatsStage)


def stage_names() -> tuple[str, ...]:
    """Every default stage's name (its output directory), in pipeline order."""
    return tuple(cls.name for cls in default_stage_classes())


def stage_order(name: str) -> tuple[int, str]:
    """Sort key: default stages in pipeline order, then any other (custom) stage by name."""
    names = stage_names()
    return (names.index(name) if name in names else len(names), name)


def default_stages(config: RunConfig, iteration: int) -> list[Stage]:
    """The chain of iteration `iteration` for `config` (the same for every iteration today)."""
    return [cls.for_config(config) for cls in default_stage_classes() if cls.enabled(config)]
