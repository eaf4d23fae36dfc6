"""Preference optimisation of θ_t on Ray Train, the loss, and the reference pass."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import StrictModel


class LossConfig(StrictModel):
    """`name` picks a registered loss; every other key is one of its hparams.

    Unset hparams take the loss's own defaults (AIPO: β 0.1, α 0.05, λ 0.2; α and λ are one point
    of the paper's Tab. 6 grid, which does not state its pick: see docs/losses.md).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "aipo"

    @model_validator(mode="after")
    def _known_loss_and_hparams(self) -> LossConfig:
        from aipo_ray.losses import available_losses, build_loss, loss_defaults

        if self.name not in available_losses():
            raise ValueError(
                f"unknown loss {self.name!r}; known losses: {', '.join(available_losses())}"
            )
        allowed = loss_defaults(self.name)
        for key, value in self.hparams.items():
            if key not in allowed:
                raise ValueError(
                    f"loss {self.name!r} has no hparam {key!r}; its hparams: "
                    f"{', '.join(sorted(allowed)) or 'none'}"
                )
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"loss.{key} must be a number (got {value!r})")
        build_loss(self.name, **self.hparams)  # the loss's own range checks (beta > 0, ...)
        return self

    @property
    def hparams(self) -> dict[str, Any]:
        """Hparams the user set explicitly."""
        return dict(self.model_extra or {})

    def resolved_hparams(self) -> dict[str, float]:
        """The loss's defaults overridden by what the config sets."""
        from aipo_ray.losses import loss_defaults

        return {**loss_defaults(self.name), **self.hparams}


class LoraConfig(StrictModel):
    """Low-rank adapters (peft) instead of full fine-tuning; rank 0 trains every weight.

    Each iteration starts new adapters on θ_t and the commit merges them, so θ_{t+1} is a plain
    checkpoint (transformers, vLLM) and the reference stays θ_t's precomputed log-probs.
    """

    rank: int = Field(default=0, ge=0, description="adapter rank r; 0: full fine-tuning")
    alpha: float = Field(default=16.0, gt=0, description="scaling α (updates scaled by α / r)")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear", description="module names to adapt, or every linear layer "
        "but the output head")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class TrainingConfig(StrictModel):
    """Ray Train + FSDP2. Global batch = micro_batch_size × grad accumulation × num_workers."""

    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0, description="used when use_gpu")
    learning_rate: float = Field(default=5e-7, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    global_batch_size: int = Field(default=256, ge=1)
    micro_batch_size: int = Field(default=1, ge=1, description="pairs per worker per forward")
    num_epochs: int = Field(default=1, ge=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0)
    max_prompt_length: int = Field(default=512, ge=1)
    max_response_length: int = Field(default=2048, ge=1)
    mixed_precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 params + fp32 reduce on GPU, fp32 on CPU"
    )
    gradient_checkpointing: bool = False
    packing: bool = Field(
        default=False, description="padding-free micro-batches: the pairs' sequences back to "
        "back in one row, position ids reset per sequence (no compute on padding)")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    cpu_offload: bool = False
    logps_chunk_size: int = Field(default=1024, ge=1, description="tokens per log-softmax chunk")
    checkpoint_every_steps: int = Field(
        default=0, ge=0, description="mid-epoch checkpoints for resume after a worker loss; 0: off"
    )
    max_failures: int = Field(default=2, ge=0, description="Ray Train FailureConfig.max_failures")
    seed: int = 0


class ReferenceConfig(StrictModel):
    """Reference log-probs of each pair under θ_t, computed once per iteration."""

    batch_size: int = Field(default=8, ge=1, description="pairs per Ray Data batch")
    num_replicas: int = Field(default=1, ge=1)
    gpus_per_replica: float = Field(default=0.0, ge=0)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=3600.0, gt=0, description="per batch; then retried")
    max_retries: int = Field(default=2, ge=0, description="retries of a batch that timed out")
