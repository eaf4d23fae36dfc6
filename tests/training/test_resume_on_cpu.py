"""A Ray Train worker killed mid-epoch: the group restarts from the last DCP checkpoint and the run
ends with the weights an uninterrupted run gives (model, optimizer, scheduler, data position)."""

import json
import threading
import time

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM

from aipo_ray.storage import make_prompt_id
from aipo_ray.training.trainer import train_policy

from .plain import assert_weights_match, plain_train
from .test_trainer_on_cpu import make_config

N = 12  # global batch 2, 2 epochs: 12 steps, a checkpoint every 2


def _pairs_and_ref():
    prompts = [f"Question number {i}: what comes after {i}?" for i in range(N)]
    pairs = pa.table({
        "prompt_id": [make_prompt_id(p) for p in prompts], "prompt": prompts,
        "chosen": [f"{i + 1}." for i in range(N)], "rejected": [f"Not {i}, surely." for i in range(N)],
        "chosen_score": [1.0] * N, "rejected_score": [0.0] * N,
    })
    ref = pa.table({"prompt_id": pairs.column("prompt_id"),
                    "ref_chosen_logp": [-30.0 - i for i in range(N)],
                    "ref_rejected_logp": [-35.0 + i for i in range(N)],
                    "chosen_len": [3] * N, "rejected_len": [6] * N})
    return pairs, ref


def _our_train_workers():
    """RayTrainWorker processes of this test's own Ray cluster (children of its raylet)."""
    import psutil
    import ray._private.worker as ray_worker

    raylet = ray_worker.global_worker.node.all_processes["raylet"][0].process.pid
    return [p for p in psutil.Process(raylet).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def _registered_checkpoint_step(storage) -> int | None:
    """The step of the checkpoint Ray Train's controller has registered (it polls every 2 s;
    a checkpoint reported but not yet collected when a worker dies is lost, by design)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        if latest:
            return latest["metrics"]["step"]
    return None


@pytest.mark.reliability_slow  # ~2.5 min each: two Ray Train worker-group starts
@pytest.mark.parametrize("num_workers", [2, 1], ids=["fsdp2-2-workers", "unwrapped-1-worker"])
def test_killed_worker_resumes_from_mid_epoch_checkpoint(
    ray_cluster, tiny_llama_path, tmp_path, num_workers
):
    config = make_config(tiny_llama_path, global_batch_size=2, num_epochs=2, adam_eps=1e-4,
                         checkpoint_every_steps=2, max_failures=1, num_workers=num_workers)
    pairs, ref = _pairs_and_ref()
    metrics_path = tmp_path / "metrics.jsonl"
    outcome = {}

    def fit():
        try:
            outcome["result"] = train_policy(
                config, pairs, ref, tiny_llama_path, output_uri=str(tmp_path / "model"),
                metrics_uri=str(metrics_path), storage_path=str(tmp_path / "ray"), run_name="resume")
        except BaseException as e:  # surfaced by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=fit)
    thread.start()
    killed, before_kill, resumed_at = None, [], None
    while thread.is_alive() and killed is None:
        resumed_at = _registered_checkpoint_step(tmp_path / "ray")
        if resumed_at is not None:
            before_kill = metrics_path.read_text().splitlines()
            victim = _our_train_workers()[-1]
            killed = victim.pid
            victim.kill()
        time.sleep(0.05)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "training finished before a worker could be killed"
    lines = metrics_path.read_text().splitlines()
    # Steps up to the checkpoint were not redone: their lines (with their timings) are unchanged.
    assert resumed_at < N and lines[:resumed_at] == before_kill[:resumed_at]
    metrics = [json.loads(ln) for ln in lines]
    # Every step once: lines past the restored checkpoint were dropped and redone.
    assert [m["step"] for m in metrics] == list(range(1, N + 1))
    expected, grad_norms = plain_train(tiny_llama_path, config, pairs, ref)
    assert [m["grad_norm"] for m in metrics] == pytest.approx(grad_norms, rel=1e-4)
    trained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"), dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    assert_weights_match(trained.state_dict(), expected, initial.state_dict())
