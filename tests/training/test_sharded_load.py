"""Sharded loading: 3 gloo ranks build the model on the meta device, read only their FSDP2
shards from safetensors, and together hold exactly the full load's weights."""

from __future__ import annotations

import json
import os

import torch

from tests.fixtures.models import build_tiny_llama

WORLD = 3  # 64 rows over 3 ranks: uneven shards (22, 21, 21)


def _rank(rank: int, model_dir: str, out: str, port: int) -> None:
    import torch.distributed as dist

    from aipo_ray.config import TrainingConfig
    from aipo_ray.training.fsdp import full_state_dict, shard_model
    from aipo_ray.training.logps import SequenceLogps
    from aipo_ray.training.sharded_load import empty_causal_lm, load_sharded_weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    causal_lm = empty_causal_lm(model_dir)
    assert all(p.is_meta for p in causal_lm.parameters())
    model = SequenceLogps(causal_lm, 16)
    shard_model(model, causal_lm, TrainingConfig(), torch.device("cpu"), torch.float32)
    load_sharded_weights(causal_lm, model_dir, torch.device("cpu"))
    local = sum(p.to_local().numel() for p in causal_lm.parameters())
    state = full_state_dict(causal_lm)
    if rank == 0:
        torch.save(state, os.path.join(out, "state.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"local_numel": local}, f)
    dist.destroy_process_group()


def test_sharded_load_equals_full_load(smollm2_path, tmp_path):
    """A tied output head (SmolLM2's) is the harder case: one parameter under two names."""
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_llama(tmp_path / "model", smollm2_path, tie_word_embeddings=True)
    port = 29500 + (os.getpid() + 7) % 20000
    torch.multiprocessing.start_processes(_rank, args=(model_dir, str(tmp_path), port),
                                          nprocs=WORLD, start_method="spawn")
    state = torch.load(tmp_path / "state.pt")
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    full = reference.state_dict()
    assert state.keys() <= full.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, full[name]), name
    total = sum(p.numel() for p in reference.parameters())  # a tied head counted once
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text())["local_numel"]
              for r in range(WORLD)]
    assert sum(shares) == total and max(shares) < total / WORLD + total * 0.02  # ~1/3 each

