"""θ_t straight into FSDP2 shards: no rank ever holds the full model.

The model is built with its parameters on the meta device (buffers such as rotary frequencies
are computed for real: they are small and not in the checkpoint), wrapped by `fully_shard`, then
materialised: every rank reads from the safetensors files only the rows of each weight that its
shard holds (`safe_open(...).get_slice`, a memory-mapped read). Peak memory per rank is its shard
of the fp32 weights plus one layer's worth of transient reads, instead of the full fp32 model
(12B × 4 bytes = 48 GB per rank before sharding, the old way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import torch
from torch import nn

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def empty_causal_lm(model_dir: str, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM of `model_dir` with fp32 parameters on the meta device, real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_config on meta leaves a tied head untied (from_pretrained ties it)
    return model


def has_safetensors(model_dir: str) -> bool:
    """Whether `model_dir` holds its weights as safetensors (the only format read by slices)."""
    return any(os.path.exists(os.path.join(model_dir, f)) for f in (WEIGHTS, INDEX))


def _weight_files(model_dir: str) -> dict[str, str]:
    """Tensor name → safetensors file holding it (single file or an index)."""
    index = os.path.join(model_dir, INDEX)
    if os.path.exists(index):
        with open(index) as f:
            mapping = json.load(f)["weight_map"]
        return {name: os.path.join(model_dir, file) for name, file in mapping.items()}
    from safetensors import safe_open

    path = os.path.join(model_dir, WEIGHTS)
    with safe_open(path, "pt") as f:
        return dict.fromkeys(f.keys(), path)


def local_rows(param: torch.Tensor) -> tuple[int, int]:
    """(first row, row count) of dim 0 that this rank's shard of `param` holds."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(param, DTensor):
        return 0, param.shape[0] if param.dim() else 0
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh,
                                                          param.placements)
    return (offset[0], shape[0]) if param.dim() else (0, 0)


def _named_unique_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    seen = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            seen.add(id(param))
            yield name, param


def load_sharded_weights(model: nn.Module, model_dir: str, device: torch.device,
                         init: Callable[[str, torch.Size], torch.Tensor] | None = None) -> None:
    """Materialise `model`'s meta parameters on `device` and fill each rank's shard from
    `model_dir`'s safetensors.

    A parameter the checkpoint lacks takes its rows of `init(name, full_shape)` (LoRA adapters);
    without `init` it raises KeyError naming it. A weight wrapped by peft (`….base_layer.weight`)
    is read under its plain name; a tied weight under the name it is saved with, which
    `named_parameters` lists first.
    """
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor

    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():  # to_empty emptied them too
            b.copy_(buffers[name])
    files = _weight_files(model_dir)
    with ExitStack() as stack:
        opened = {path: stack.enter_context(safe_open(path, "pt"))
                  for path in sorted(set(files.values()))}
        for name, param in _named_unique_parameters(model):
            key = name.replace(".base_layer.", ".")
            start, rows = local_rows(param)
            if key in files:
                view = opened[files[key]].get_slice(key)
            elif init is not None:
                view = init(name, param.shape)
            else:
                raise KeyError(f"{model_dir}: no tensor {key!r} in its safetensors")
            local = param.to_local() if isinstance(param, DTensor) else param
            source = view[:] if param.dim() == 0 else view[start:start + rows]
            with torch.no_grad():
                local[:source.shape[0]].copy_(source.to(local.dtype))
