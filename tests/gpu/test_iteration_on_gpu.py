"""A full tiny iteration with every stage on the GPU: vLLM generation, the policy as judge, the
reference pass, and bf16 FSDP2 training with `use_gpu: true`; θ_1 committed and loadable."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from aipo_ray.config import build_config
from aipo_ray.models import resolve_model_path
from aipo_ray.pipeline.driver import run
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import verify_checkpoint
from tests.e2e.conftest import tiny_run_config

from .conftest import GPU, NEEDS_RAY, NEEDS_VLLM

pytestmark = [*GPU, NEEDS_RAY, NEEDS_VLLM]


def test_one_iteration_with_use_gpu_commits_a_trained_model(gpu_ray, tiny_llama_path, tmp_path):
    data = tiny_run_config(tiny_llama_path, str(tmp_path / "run"), tmp_path / "prompts.jsonl",
                           iterations=1)
    data["generation"].update(backend="vllm", gpus_per_replica=1, max_model_len=512,
                              engine_kwargs={"gpu_memory_utilization": 0.5})
    data["ranking"].update(gpus_per_replica=1)
    data["reference"] = {"gpus_per_replica": 1}
    data["training"].update(use_gpu=True, gpus_per_worker=1)
    data.pop("ray")  # gpu_ray is up: the driver joins it
    config = build_config(data)

    summary = run(config)

    rd = RunDir(str(tmp_path / "run"))
    assert summary.latest_model == "iter_001" == rd.latest_model()
    verify_checkpoint(rd.model_uri(1))
    assert rd.stage_success(1, "generations")["rows_out"] == 6 * 3
    assert rd.stage_success(1, "train")["rows_in"] > 0
    trained = AutoModelForCausalLM.from_pretrained(resolve_model_path(rd.model_uri(1)),
                                                   dtype=torch.float32).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    assert any(not torch.equal(trained[k], v) for k, v in initial.state_dict().items())
