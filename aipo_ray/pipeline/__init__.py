"""The recipe: stages wired into iterations. Components never import this package."""

from .fingerprint import fingerprint, identity_payload
from .registry import default_stages, stage_names
from .runner import is_done, run_stage
from .stage import DamagedInput, PolicyStage, Stage, StageContext, StageError, StageResult

__all__ = [
    "DamagedInput", "PolicyStage", "Stage", "StageContext", "StageError", "StageResult",
    "default_stages", "fingerprint", "identity_payload", "is_done", "run_stage", "stage_names",
]


def run(config, stages=None, **kwargs):
    """Run the iterations; implemented in aipo_ray.pipeline.driver."""
    from .driver import run as _run

    return _run(config, stages=stages, **kwargs)
