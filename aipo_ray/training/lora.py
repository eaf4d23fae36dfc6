"""LoRA (peft) on the policy: adapters in, merged weights out.

Each iteration puts new adapters on θ_t (`apply_lora`); only they train, so optimizer state and
gradients are a few MB even for a 12B model. The reference stays θ_t's precomputed log-probs: with
the adapters' B = 0 at the start, the first step's policy is exactly θ_t. The trainer merges the
adapters into the base weights before it stages the model (`merge_lora_state`), so θ_{t+1} is a
plain Hugging Face checkpoint that transformers and vLLM load, the next iteration starts fresh
adapters on it, and the commit still only renames what the trainer wrote once.
"""

from __future__ import annotations

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
    head and `save_pretrained` are where the rest of training expects them. `seed` fixes the
    adapters' A initialisation (B starts at zero).
    """
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(causal_lm, peft_config(cfg)).base_model.model


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
