"""Where the run lives: a local path or s3://bucket/prefix, and how to reach it."""

from __future__ import annotations

from pydantic import Field, SecretStr

from .base import StrictModel


class StorageConfig(StrictModel):
    """Object-storage options. Credentials default to the standard AWS environment variables.

    Secrets are `SecretStr`: they never print, and are left out of `run.json`.
    """

    endpoint_url: str | None = Field(default=None, description="S3 endpoint; else AWS_ENDPOINT_URL")
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    anon: bool = False
    max_retries: int = Field(default=5, ge=0, le=50, description="retries of one storage call")
    retry_backoff_s: float = Field(default=0.5, gt=0, le=60, description="first backoff, doubles")
    retry_max_wait_s: float = Field(default=30.0, gt=0, description="cap on one backoff")
    shard_size: int = Field(
        default=1024, ge=1,
        description="prompts per Parquet part of a sharded stage; each part is committed whole",
    )
    local_cache_dir: str = Field(
        default="~/.cache/aipo_ray", description="where committed checkpoints are downloaded"
    )
