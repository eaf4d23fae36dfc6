"""Ray Train + FSDP2 with one worker on each of two nodes: equal to plain single-process PyTorch,
and a worker node lost mid-epoch (its raylet SIGKILLed) costs only the steps since the last
checkpoint: the run restarts on a replacement node and ends with the uninterrupted weights."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.plain import assert_weights_match, plain_logps, plain_train
from tests.training.test_resume_on_cpu import N, _pairs_and_ref, _registered_checkpoint_step
from tests.training.test_trainer_on_cpu import ADAM_EPS, make_config, make_pairs

from . import drivers

pytestmark = pytest.mark.cluster


def _train_workers(cluster, job_id: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=cluster.dashboard, detail=True, limit=10_000,
                       filters=[("job_id", "=", job_id), ("class_name", "=", "RayTrainWorker")],
                       raise_on_missing_output=False)


def _plain_reference(model_path: str, config, pairs: pa.Table) -> pa.Table:
    """Reference log-probs of θ_0 in this process (the reference stage is not under test here;
    test_trainer_on_cpu pins it to these numbers)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with torch.no_grad():
        chosen, rejected, chosen_len, rejected_len = plain_logps(model, tokenizer, config, pairs,
                                                                 range(pairs.num_rows))
    return pa.table({"prompt_id": pairs.column("prompt_id"),
                     "ref_chosen_logp": chosen.tolist(), "ref_rejected_logp": rejected.tolist(),
                     "chosen_len": chosen_len.int().tolist(),
                     "rejected_len": rejected_len.int().tolist()})


def _weights_match_plain(model_path: str, out, config, pairs, ref) -> list[float]:
    """Asserts the committed model's weights are plain PyTorch's; returns plain's grad norms."""
    expected, grad_norms = plain_train(model_path, config, pairs, ref)
    trained = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    assert_weights_match(trained.state_dict(), expected, initial.state_dict())
    return grad_norms


def test_fsdp2_with_a_worker_on_each_node_matches_single_process_pytorch(
    healthy_cluster, tiny_llama_path, tmp_path
):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    config = make_config(tiny_llama_path, cpus_per_worker=1.5, adam_eps=ADAM_EPS)
    pairs = make_pairs()
    ref = _plain_reference(tiny_llama_path, config, pairs)
    spec = {"out": str(out), "model": tiny_llama_path, "training": {"adam_eps": ADAM_EPS}}
    proc = drivers.start("train", spec, healthy_cluster.address, log, pairs=pairs, ref=ref)
    info = drivers.finish(proc, out, log, 900)

    names = healthy_cluster.node_names()
    placed = sorted(names[w.node_id] for w in _train_workers(healthy_cluster, info["job_id"]))
    assert placed == ["node_a", "node_b"]
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    grad_norms = _weights_match_plain(tiny_llama_path, out, config, pairs, ref)
    assert [m["grad_norm"] for m in metrics] == pytest.approx(grad_norms, rel=1e-4)


def test_worker_node_lost_mid_epoch_resumes_on_a_replacement_node_with_the_same_weights(
    healthy_cluster, tiny_llama_path, tmp_path
):
    cluster = healthy_cluster
    out, log = tmp_path / "out", tmp_path / "driver.log"
    training = {"global_batch_size": 2, "num_epochs": 2, "adam_eps": 1e-4,
                "checkpoint_every_steps": 2, "max_failures": 3}
    spec = {"out": str(out), "model": tiny_llama_path, "training": training}
    pairs, ref = _pairs_and_ref()
    lost = cluster.alive_nodes()["node_a"]
    proc = drivers.start("train", spec, cluster.address, log, pairs=pairs, ref=ref)

    # Kill node_a's raylet once Ray Train's controller has registered a mid-epoch checkpoint.
    deadline = time.monotonic() + 600
    resumed_at = None
    while resumed_at is None:
        assert proc.poll() is None, f"driver ended before a checkpoint:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint registered in 600 s"
        resumed_at = _registered_checkpoint_step(out / "ray")
        time.sleep(0.1)
    before_kill = (out / "metrics.jsonl").read_text().splitlines()
    cluster.kill_raylet("node_a")
    cluster.wait_dead("node_a", lost)
    # What an autoscaler or KubeRay does: a new node of the same kind joins. The other worker
    # node and the 1-CPU head cannot hold a second 1.5-CPU worker, so the restarted group waits.
    cluster.restart("node_a")
    info = drivers.finish(proc, out, log, 900)

    names = cluster.node_names()
    workers = _train_workers(cluster, info["job_id"])
    assert lost in {w.node_id for w in workers}, "no worker ran on the lost node"
    replacement = cluster.alive_nodes()["node_a"]
    assert replacement in {w.node_id for w in workers}, "the group did not restart on the new node"
    assert {names[w.node_id] for w in workers} == {"node_a", "node_b"}

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert resumed_at < N and lines[:resumed_at] == before_kill[:resumed_at]
    metrics = [json.loads(ln) for ln in lines]
    assert [m["step"] for m in metrics] == list(range(1, N + 1))  # every step once
    config = make_config(tiny_llama_path, cpus_per_worker=1.5, **training)
    grad_norms = _weights_match_plain(tiny_llama_path, out, config, pairs, ref)
    assert [m["grad_norm"] for m in metrics] == pytest.approx(grad_norms, rel=1e-4)
