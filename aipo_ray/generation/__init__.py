"""N-candidate generation behind one Generator protocol: `hf` (transformers) and `vllm` (ray.data.llm).

Components never import the pipeline; the `generations` stage (pipeline/stages/generate.py)
and self-instruct both call `generate`.
"""

from .api import BACKENDS, generate, get_generator
from .base import (
    LENGTH,
    OUTPUT_COLUMNS,
    STOP,
    GenerationError,
    Generator,
    Sampling,
    candidate_seed,
    check_candidates,
    progress_deadline,
)

__all__ = [
    "BACKENDS", "LENGTH", "OUTPUT_COLUMNS", "STOP", "GenerationError", "Generator", "Sampling",
    "candidate_seed", "check_candidates", "generate", "get_generator", "progress_deadline",
]
