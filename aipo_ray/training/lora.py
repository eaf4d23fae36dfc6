"""LoRA (peft) on the policy: adapters in, merged weights out.

Each iteration puts new adapters on θ_t (`apply_lora`); only they train, so optimizer state and
gradients are a few MB even for a 12B model. The reference stays θ_t's precomputed log-probs: with
the adapters' B = 0 at the start, the first step's policy is exactly θ_t. The trainer merges the
adapters into the base weights before it stages the model (`merge_lora_state`), so θ_{t+1} is a
plain Hugging Face checkpoint that transformers and vLLM load, the next iteration starts fresh
adapters on it, and the commit still only renames what the trainer wrote once.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from aipo_ray.config.training import LoraConfig

ADAPTER = "default"  # peft's name for the one adapter


def peft_config(cfg: LoraConfig):
    """The `peft.LoraConfig` of `cfg` (plain LoRA: no bias, no rsLoRA, no DoRA)."""
    from peft import LoraConfig as PeftLoraConfig

    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=targets, bias="none")


def apply_lora(causal_lm: nn.Module, cfg: LoraConfig, seed: int) -> nn.Module:
    """`causal_lm` with LoRA layers injected and every other weight frozen (in place).

    Returns the same transformers model (not peft's wrapper), so decoder layers, the output
    head and `save_pretrained` are where the rest of training expects them. The adapters are
    initialised by `init_adapters` (on the meta device they are left for sharded loading).
    """
    from peft import get_peft_model

    model = get_peft_model(causal_lm, peft_config(cfg)).base_model.model
    init_adapters(model, seed)
    return model


def adapter_init(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The initial value of adapter parameter `name`: A as peft initialises it (Kaiming
    uniform, a = √5) from a generator seeded by `seed` and the name, B zero.

    Seeding by name makes every rank (and a sharded load, which draws each tensor whole and
    keeps its rows) produce the same adapters whatever the order it builds them in.
    """
    if f".lora_B.{ADAPTER}." in name:
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    out = torch.empty(shape)
    fan_in = shape[1]
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=√5) = U(±1/√fan_in)
    return out.uniform_(-bound, bound, generator=generator)


def init_adapters(model: nn.Module, seed: int) -> None:
    """Set every materialised adapter parameter of `model` to `adapter_init`."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name and not param.is_meta:
                param.copy_(adapter_init(name, param.shape, seed))


def merge_lora_state(state: dict[str, torch.Tensor], cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """A full state dict with LoRA layers → the plain model's: W + (α / r) · B A per layer.

    `state` uses peft's names (`….q_proj.base_layer.weight`, `….q_proj.lora_A.default.weight`);
    the result has the base model's (`….q_proj.weight`). Merged in fp32, stored in W's dtype.
    """
    scaling = cfg.alpha / cfg.rank
    merged = {}
    for name, tensor in state.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base_layer." not in name:
            merged[name] = tensor
            continue
        prefix, _, leaf = name.partition(".base_layer.")
        if leaf == "weight" and f"{prefix}.lora_A.{ADAPTER}.weight" in state:
            a = state[f"{prefix}.lora_A.{ADAPTER}.weight"].float()
            b = state[f"{prefix}.lora_B.{ADAPTER}.weight"].float()
            tensor = (tensor.float() + scaling * (b @ a)).to(tensor.dtype)
        merged[f"{prefix}.{leaf}"] = tensor
    return merged


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer updates: every parameter, or only the adapters under LoRA."""
    return [p for p in model.parameters() if p.requires_grad]
