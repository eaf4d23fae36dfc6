"""Prompt pool, self-instruct, rule filters and preference pairs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import DATA_CONTENT, OMIT_AT_DEFAULT, StrictModel


class PromptSourceConfig(StrictModel):
    """One source of prompts. `format: auto` guesses from the suffix (a directory is `hf_disk`)."""

    path: str = Field(description="file, directory, glob, or a hub dataset name (format: hf_hub)",
                      json_schema_extra=DATA_CONTENT)
    format: Literal["auto", "jsonl", "parquet", "csv", "hf_disk", "hf_hub"] = "auto"
    text_field: str = Field(default="prompt", description="column holding the prompt text")
    messages_field: str | None = Field(
        default="messages", description="chat-messages column (UltraFeedback style); first user turn"
    )
    split: str = "train"
    limit: int | None = Field(default=None, ge=1, description="keep the first N prompts")


SEED_PROMPTS = "builtin:seed_prompts"


class PromptsConfig(StrictModel):
    """The initial prompt pool X^pool (Algorithm 1)."""

    sources: list[PromptSourceConfig] = Field(
        default_factory=lambda: [PromptSourceConfig(path=SEED_PROMPTS)],
        description="default: the ~60 seed prompts shipped in aipo_ray/assets",
    )
    max_prompt_chars: int = Field(default=8000, ge=1, description="longer prompts are rejected")
    per_iteration: int | None = Field(
        default=None, ge=1,
        description="self-instruct off: prompts per iteration, a different seeded slice of the "
        "pool each iteration (default: the whole pool every iteration)",
    )


class FilterConfig(StrictModel):
    """Rule-based filters applied to self-instructed prompts (paper A.1, Wang et al. 2023)."""

    min_words: int = Field(default=3, ge=1)
    max_words: int = Field(default=150, ge=1)
    min_tokens: int = Field(default=3, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    similarity: Literal["rouge_l", "jaccard"] = "rouge_l"
    max_similarity: float = Field(default=0.7, gt=0, le=1, description="near-duplicate threshold")
    ngram_size: int = Field(default=2, ge=1, le=8, description="word n-grams of `similarity: jaccard`")
    block_keywords: list[str] = Field(
        default_factory=lambda: [
            "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
            "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
            "diagram",
        ],
        description="instructions mentioning these (whole words) need non-text I/O",
    )
    reject_refusals: bool = True
    reject_artifacts: bool = True


class SelfInstructConfig(StrictModel):
    """Growing the pool with θ_t (Algorithm 1: x^i = SelfInstruct_θt(X^pool))."""

    enabled: bool = True
    num_instructions: int = Field(default=20000, ge=1, description="P new instructions per iteration")
    num_few_shot: int = Field(default=8, ge=1, le=32, description="k examples per request")
    num_few_shot_generated: int = Field(
        default=2, ge=0, le=32,
        description="of the k, at most this many from earlier iterations' instructions (Wang et al. "
        "use 2 of 8); the rest come from the seed sources",
    )
    prompt_template: str | None = Field(
        default=None, description="request text with an {examples} slot; default: see docs/data.md"
    )
    oversample: float = Field(default=2.0, ge=1, le=20, description="requests per wanted instruction")
    max_tokens: int = Field(default=256, ge=8)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    filters: FilterConfig = Field(default_factory=FilterConfig)

    @field_validator("prompt_template")
    @classmethod
    def _has_examples_slot(cls, v: str | None) -> str | None:
        if v is not None and "{examples}" not in v:
            raise ValueError("prompt_template must contain the {examples} slot")
        return v


class PairsConfig(StrictModel):
    """Best and worst candidate per prompt become (chosen, rejected)."""

    min_score_gap: float = Field(default=0.0, ge=0, description="drop pairs closer than this")
    drop_ties: bool = True
    max_pairs: int | None = Field(default=None, ge=1, description="cap on pairs per iteration")
    drop_truncated: bool = Field(default=True, description="drop candidates cut by max_tokens")
    drop_empty: bool = True
    target: int | None = Field(
        default=None, ge=1, json_schema_extra=OMIT_AT_DEFAULT,
        description="pairs wanted per iteration (the paper's unit: 20K): sample more prompts, "
        "round after round, until this many survive the rules above; the iteration trains on "
        "the first `target` (default: one round, whatever survives)",
    )
    max_rounds: int = Field(
        default=4, ge=1, le=100, json_schema_extra=OMIT_AT_DEFAULT,
        description="with `target`: at most this many sampling rounds per iteration; fewer "
        "pairs than `target` after the last is a warning, not an error",
    )
