"""Prompt sources, self-instruct with θ_t, its rule filters, and preference pairs.

Components: nothing here imports the pipeline; the stages in aipo_ray/pipeline/stages wire them.
"""

from .filters import RULES, FilterResult, Instruction, filter_instructions, first_failure
from .pairs import PAIRS_OUT, PairsResult, select_pairs
from .pool import PromptPool, load_pool
from .self_instruct import (
    DEFAULT_TEMPLATE,
    SELF_INSTRUCT,
    build_requests,
    parse_instruction,
    self_instruct,
)
from .similarity import NearDuplicateIndex, lcs_length, ngram_jaccard, rouge_l
from .sources import LoadedPrompts, PromptSourceError, load_prompts, seed_prompts_path

__all__ = [
    "DEFAULT_TEMPLATE", "PAIRS_OUT", "RULES", "SELF_INSTRUCT", "FilterResult", "Instruction",
    "LoadedPrompts", "NearDuplicateIndex", "PairsResult", "PromptPool", "PromptSourceError",
    "build_requests", "filter_instructions", "first_failure", "lcs_length", "load_pool",
    "load_prompts", "ngram_jaccard", "parse_instruction", "rouge_l", "seed_prompts_path",
    "select_pairs", "self_instruct",
]
