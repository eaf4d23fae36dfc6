"""The recipe: stages wired into iterations. Components never import this package."""

from .stage import (
    DamagedInput,
    Stage,
    StageContext,
    StageError,
    StageResult,
    fingerprint,
    is_done,
    run_stage,
)

__all__ = [
    "DamagedInput", "Stage", "StageContext", "StageError", "StageResult", "fingerprint",
    "is_done", "run_stage",
]


def run(config, stages=None, **kwargs):
    """Run the iterations; implemented in aipo_ray.pipeline.driver."""
    from .driver import run as _run

    return _run(config, stages=stages, **kwargs)
