"""FSDP2 wrapping: each decoder layer, then the root; full state dict gathered at the end.

A single worker computing in fp32 is left unwrapped: sharding over one rank saves nothing, and
FSDP2 would still allocate unsharded copies of the parameters for forward and backward next to
the sharded ones (measured: +580 MB peak RSS, one model's worth, on SmolLM2-135M; see
docs/performance.md). With bf16 compute FSDP2 stays on even for one worker, because its
mixed-precision policy is what keeps fp32 master weights beside the bf16 compute copy.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from aipo_ray.config import TrainingConfig

log = logging.getLogger(__name__)


def decoder_layers(causal_lm: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (Llama, Qwen, Mistral, GPT-2, ...)."""
    decoder = causal_lm.get_decoder()
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    raise ValueError(f"{type(causal_lm).__name__}: cannot find its decoder layers to shard")


def wraps(cfg: TrainingConfig, world: int, device: torch.device, param_dtype: torch.dtype) -> bool:
    """Whether `shard_model` applies FSDP2 (all but one fp32 worker without offload)."""
    offload = cfg.cpu_offload and device.type == "cuda"
    return not (world == 1 and param_dtype == torch.float32 and not offload)


def shard_model(model: nn.Module, causal_lm: nn.Module, cfg: TrainingConfig,
                device: torch.device, param_dtype: torch.dtype) -> nn.Module:
    """Apply `fully_shard` to every decoder layer of `causal_lm`, then to `model` (the root).

    Parameters stay fp32 (what AdamW updates); `param_dtype` is the compute dtype (bf16 on GPU,
    with fp32 gradient reduction). With cpu_offload on GPU the shards live in host memory.
    One worker in fp32 gets the plain module on its device instead (see the module docstring).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    world = torch.distributed.get_world_size()
    offload = cfg.cpu_offload and device.type == "cuda"
    if cfg.cpu_offload and not offload:
        log.warning("training.cpu_offload ignored: parameters already live on the CPU")
    if cfg.gradient_checkpointing:
        causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    causal_lm.config.use_cache = False
    if not wraps(cfg, world, device, param_dtype):
        return model.to(device)
    mesh = init_device_mesh(device.type, (world,))
    kwargs: dict = {"mesh": mesh}
    if param_dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype,
                                                   reduce_dtype=torch.float32)
    kwargs["offload_policy"] = CPUOffloadPolicy() if offload else OffloadPolicy()
    for layer in decoder_layers(causal_lm):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    on_meta = any(p.is_meta for p in model.parameters())  # sharded_load materialises them
    if device.type == "cuda" and not offload and not on_meta:
        model.to(device)
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Reduce-scatter gradients in this backward (last micro-batch) or keep accumulating locally."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def full_state_dict(causal_lm: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU, on rank 0 only (others get {}). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        causal_lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> float:
    """Global gradient norm over all shards (clipped to `max_norm` when set)."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)
