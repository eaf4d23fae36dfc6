"""Ray cluster, evaluation and serving options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from .base import DATA_CONTENT, MODEL_CONTENT, StrictModel


class RayConfig(StrictModel):
    """`address: null` starts an embedded local Ray, or joins the job's cluster under `ray job`."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    object_store_memory: int | None = Field(
        default=None, ge=75 * 1024 * 1024, description="bytes; cap it on small machines"
    )
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    log_to_driver: bool = Field(
        default=False, description="show workers' output on the driver's console (also with -v)"
    )


class EvalConfig(StrictModel):
    """Win rate of each committed model over the previous one (and the base) on held-out prompts,
    plus the analysis options of the per-iteration statistics (`iter_NNN/stats.json`)."""

    prompts: str | None = Field(
        default=None,
        description="held-out prompt file (jsonl/json/parquet/csv/txt); else seed prompts "
        "that no iteration trained on",
        json_schema_extra=DATA_CONTENT,
    )
    num_prompts: int = Field(default=64, ge=1)
    max_tokens: int | None = Field(
        default=None, ge=1, description="answer budget; default generation.max_tokens, so a "
        "model's answers are cut no shorter than in training"
    )
    temperature: float = Field(default=0.0, ge=0, le=2, description="0: greedy decoding")
    top_p: float = Field(default=1.0, gt=0, le=1)
    compare_to_base: bool = Field(default=True, description="also judge each model against θ_0")
    bootstrap_samples: int = Field(default=1000, ge=10)
    confidence: float = Field(default=0.95, gt=0, lt=1, description="bootstrap interval level")
    seed: int = 0
    similarity_model: str | None = Field(
        default=None,
        description="encoder for chosen/rejected similarity in stats.json; default word "
        "n-gram overlap",
        json_schema_extra=MODEL_CONTENT,
    )
    similarity_ngram: int = Field(default=2, ge=1, le=8, description="n of the n-gram overlap")


class ServeConfig(StrictModel):
    """`aipo serve`: an OpenAI-compatible chat endpoint for a checkpoint and a /rank endpoint."""

    host: str = Field(default="127.0.0.1", description="bind address; loopback unless you mean it")
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    backend: Literal["auto", "hf", "vllm"] = Field(
        default="auto", description="auto: vllm when serve.gpus_per_replica > 0, else transformers"
    )
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    max_tokens_limit: int = Field(default=1024, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_n: int = Field(default=8, ge=1, description="most choices (`n`) one request may ask for")
    max_rank_candidates: int = Field(default=64, ge=2)
    num_replicas: int = Field(default=1, ge=1)
    cpus_per_replica: float = Field(default=1.0, ge=0)
    gpus_per_replica: float = Field(default=0.0, ge=0)
    rank: bool = Field(default=True, description="serve /rank with the run's ranking config")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to vLLM")
    auth_token: SecretStr | None = Field(default=None, description="else AIPO_SERVE_TOKEN env")

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> ServeConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"serve.default_max_tokens ({self.default_max_tokens}) exceeds "
                f"serve.max_tokens_limit ({self.max_tokens_limit})"
            )
        return self
