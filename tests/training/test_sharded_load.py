"""Sharded loading: 3 gloo ranks build the model on the meta device, read only their FSDP2
shards from safetensors, and together hold exactly the full load's weights."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from tests.fixtures.models import build_tiny_llama

WORLD = 3  # 64 rows over 3 ranks: uneven shards (22, 21, 21)
LORA = {"rank": 4, "alpha": 8.0}


def _rank(rank: int, model_dir: str, out: str, port: int, lora: bool) -> None:
    import torch.distributed as dist

    from aipo_ray.config import TrainingConfig
    from aipo_ray.config.training import LoraConfig
    from aipo_ray.training.fsdp import full_state_dict, shard_model
    from aipo_ray.training.logps import SequenceLogps
    from aipo_ray.training.lora import adapter_init, apply_lora
    from aipo_ray.training.sharded_load import empty_causal_lm, load_sharded_weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    causal_lm = empty_causal_lm(model_dir)
    if lora:
        causal_lm = apply_lora(causal_lm, LoraConfig(**LORA), seed=0)
    assert all(p.is_meta for p in causal_lm.parameters())
    model = SequenceLogps(causal_lm, 16)
    shard_model(model, causal_lm, TrainingConfig(), torch.device("cpu"), torch.float32)
    load_sharded_weights(causal_lm, model_dir, torch.device("cpu"),
                         init=lambda name, shape: adapter_init(name, shape, 0))
    local = sum(p.to_local().numel() for p in causal_lm.parameters())
    state = full_state_dict(causal_lm)
    if rank == 0:
        torch.save(state, os.path.join(out, "state.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"local_numel": local}, f)
    dist.destroy_process_group()


def _free_port() -> int:
    """A port nobody listens on (this process may hold a 1-rank group of its own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sharded_load_equals_full_load(lora, smollm2_path, tmp_path):
    """A tied output head (SmolLM2's) is the harder case: one parameter under two names. With
    LoRA the adapters, built on the meta device, equal an unsharded `apply_lora`'s."""
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_llama(tmp_path / "model", smollm2_path, tie_word_embeddings=True)
    port = _free_port()
    torch.multiprocessing.start_processes(_rank, args=(model_dir, str(tmp_path), port, lora),
                                          nprocs=WORLD, start_method="spawn")
    state = torch.load(tmp_path / "state.pt")
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        from aipo_ray.config.training import LoraConfig
        from aipo_ray.training.lora import apply_lora

        reference = apply_lora(reference, LoraConfig(**LORA), seed=0)
    full = reference.state_dict()
    assert state.keys() <= full.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, full[name]), name
    total = sum(p.numel() for p in reference.parameters())  # a tied head counted once
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text())["local_numel"]
              for r in range(WORLD)]
    assert sum(shares) == total and max(shares) < total / WORLD + total * 0.02  # ~1/3 each

