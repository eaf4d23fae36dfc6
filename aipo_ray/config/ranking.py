"""Ranking candidates: PairRM, an LLM judge, or a user's function."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import MODEL_CONTENT, StrictModel


class RankingConfig(StrictModel):
    backend: str = Field(
        default="pairrm",
        description="a registered ranker: pairrm, llm_judge, reward_model, http_judge, callable, or one of your own (docs/ranking.md)",
    )
    model: str = Field(
        default="llm-blender/PairRM",
        description="PairRM dir / hub name; for llm_judge a causal LM (dir, hub name, builtin:NAME) or 'policy' (θ_t); for reward_model a sequence-classification reward model (dir, hub id, s3:// checkpoint); for http_judge the name the server serves the judge under",
        json_schema_extra=MODEL_CONTENT,
    )
    backbone: str | None = Field(default=None, description="DeBERTa backbone dir for PairRM",
                                 json_schema_extra=MODEL_CONTENT)
    mode: Literal["full", "tournament"] = Field(
        default="full", description="full N×N matrix (paper) or O(N) best/worst tournament"
    )
    callable: str | None = Field(default=None, description="'module:function' for backend=callable")
    judge_prompt: Literal["ab", "self_rewarding"] = Field(
        default="ab",
        description="llm_judge, http_judge: ab (which of two responses is better, both orders) or "
                    "self_rewarding (the Self-Rewarding paper's additive 5-point score per response)",
    )
    judge_mode: Literal["pairwise", "pointwise"] | None = Field(
        default=None,
        description="pairwise (the ab prompt) or pointwise (the self_rewarding prompt); "
                    "None: as judge_prompt says",
    )
    judge_max_tokens: int | None = Field(
        default=None, ge=1,
        description="tokens a judge may write: None gives 16 for ab over HTTP, 256 for self_rewarding",
    )
    judge_max_prompt_tokens: int = Field(
        default=512, ge=1, description="llm_judge: the instruction is cut to this many tokens"
    )
    judge_max_response_tokens: int = Field(
        default=512, ge=1, description="llm_judge: each response is cut to this many tokens"
    )
    url: str | None = Field(
        default=None, description="http_judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"
    )
    api_key_env: str | None = Field(
        default=None,
        description="http_judge: NAME of the environment variable holding the API key (sent as a "
                    "Bearer token); the key itself is never in the config",
    )
    max_concurrency: int = Field(default=8, ge=1, description="http_judge: requests in flight per replica")
    request_timeout_s: float = Field(default=60.0, gt=0, description="http_judge: per request")
    request_retries: int = Field(
        default=3, ge=0,
        description="http_judge: retries of a request after a 429, a 5xx, a timeout or a connection "
                    "error, with exponential backoff",
    )
    batch_size: int = Field(default=8, ge=1, description="prompts per Ray Data batch")
    pair_batch_size: int = Field(
        default=16, ge=1,
        description="sequences per forward pass: comparisons (pairrm, llm_judge), conversations (reward_model)",
    )
    max_length: int = Field(
        default=4096, ge=16,
        description="reward_model: tokens per conversation; longer ones lose tokens from the left of the prompt",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: float32 on CPU; on a GPU float16 for PairRM (as llm-blender), bfloat16 for a judge",
    )
    num_replicas: int = Field(default=1, ge=1)
    gpus_per_replica: float = Field(default=0.0, ge=0)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=3600.0, gt=0)
    max_retries: int = Field(default=2, ge=0)

    options: dict[str, Any] = Field(
        default_factory=dict, description="settings of a ranker registered outside aipo-ray"
    )

    @model_validator(mode="after")
    def _registered_backend(self) -> RankingConfig:
        from aipo_ray.ranking.registry import RANKERS

        RANKERS.check(self.backend, self)
        return self
