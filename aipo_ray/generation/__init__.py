"""N-candidate generation behind one Generator protocol: `hf` (transformers) and `vllm` (ray.data.llm).

Components never import the pipeline; the `generations` stage (pipeline/stages/generate.py)
and self-instruct both call `generate`.
"""

from .api import generate, get_generator
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
from .engines import release_engines
from .registry import GENERATORS, available_generators, register_generator

__all__ = [
    "GENERATORS", "LENGTH", "OUTPUT_COLUMNS", "STOP", "GenerationError", "Generator", "Sampling",
    "available_generators", "candidate_seed", "check_candidates", "generate", "get_generator", "progress_deadline",
    "register_generator", "release_engines",
]
