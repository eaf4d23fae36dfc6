"""Ray cluster, evaluation and serving options."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from .base import StrictModel


class RayConfig(StrictModel):
    """`address: null` starts an embedded local Ray, or joins the job's cluster under `ray job`."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    object_store_memory: int | None = Field(
        default=None, ge=75 * 1024 * 1024, description="bytes; cap it on small machines"
    )
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class EvalConfig(StrictModel):
    """Win rate of each committed model over the previous one on held-out prompts."""

    prompts: str | None = Field(default=None, description="held-out prompt file; else a split")
    num_prompts: int = Field(default=64, ge=1)
    max_tokens: int = Field(default=256, ge=1)
    bootstrap_samples: int = Field(default=1000, ge=10)
    seed: int = 0


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    max_tokens_limit: int = Field(default=1024, ge=1)
    auth_token: SecretStr | None = Field(default=None, description="else AIPO_SERVE_TOKEN env")
