"""Ray Train + FSDP2 with 2 gloo workers on the tiny Llama, against plain single-process PyTorch.

One module-scoped run (reference log-probs through Ray Data, then 2 optimizer steps of DPO with
reference = policy) backs most tests here: starting Ray Train workers costs tens of seconds.
"""

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aipo_ray.config import LossConfig, ModelConfig, RunConfig, TrainingConfig
from aipo_ray.config.generation import GenerationConfig
from aipo_ray.losses import PairLogps, build_loss
from aipo_ray.storage import make_prompt_id
from aipo_ray.storage.checkpoint import verify_checkpoint
from aipo_ray.training import PairEncoder
from aipo_ray.training.reference import compute_ref_logps
from aipo_ray.training.trainer import batch_plan, train_policy

from .plain import assert_weights_match, plain_logps, plain_train

PROMPTS = [
    "Name a primary colour.",
    "What is the capital of France? " + "Please answer briefly and clearly. " * 6,
    "Say hello.",
    "Count to three.",
    "Give me a fruit.",
]
CHOSEN = ["Red is a primary colour.", "Paris.", "Hello!", "One, two, three.", "An apple."]
REJECTED = ["Dog.", "I do not know, maybe Rome or Madrid.", "Bye.", "Four.", "A chair, surely."]
MAX_PROMPT = 48  # the long prompt (system prompt + question) exceeds it: truncation is counted
MAX_RESPONSE = 8
# Adam divides by √v + eps: with the default 1e-8, weights whose gradient is ~1e-9 (common in a
# random tiny model) turn fp32 rounding noise into O(lr) update noise. A larger eps keeps the
# single-process comparison well-conditioned without changing what is compared.
ADAM_EPS = 1e-4


def make_pairs() -> pa.Table:
    return pa.table({
        "prompt_id": [make_prompt_id(p) for p in PROMPTS], "prompt": PROMPTS, "chosen": CHOSEN,
        "rejected": REJECTED, "chosen_score": [1.0] * 5, "rejected_score": [0.0] * 5,
    })


def make_config(model_path: str, **training) -> RunConfig:
    params = dict(
        num_workers=2, global_batch_size=4, micro_batch_size=1, learning_rate=1e-3,
        lr_scheduler="constant", warmup_ratio=0.0, max_grad_norm=1.0, num_epochs=1,
        max_prompt_length=MAX_PROMPT, max_response_length=MAX_RESPONSE, logps_chunk_size=5,
    )
    params.update(training)
    return RunConfig(
        model=ModelConfig(path=model_path), loss=LossConfig(name="dpo"),
        training=TrainingConfig(**params), generation=GenerationConfig(max_tokens=MAX_RESPONSE),
    )


@pytest.fixture(scope="module")
def dpo_run(ray_cluster, tiny_llama_path, tmp_path_factory):
    """5 pairs, global batch 4 on 2 workers × micro 1 × accum 2: steps of 4 and then 1 pair.

    Activation checkpointing is on: it must not change a single result below.
    """
    out = tmp_path_factory.mktemp("dpo-run")
    config = make_config(tiny_llama_path, adam_eps=ADAM_EPS, gradient_checkpointing=True)
    pairs = make_pairs()
    ref = compute_ref_logps(config, pairs, tiny_llama_path)
    result = train_policy(config, pairs, ref, tiny_llama_path, output_uri=str(out / "model"),
                          metrics_uri=str(out / "train" / "metrics.jsonl"),
                          storage_path=str(out / "ray"))
    lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
    return {"config": config, "pairs": pairs, "ref": ref, "result": result, "out": out,
            "metrics": [json.loads(ln) for ln in lines]}


def test_reference_logps_equal_the_trainers_logps(dpo_run, tiny_llama_path):
    ref, config = dpo_run["ref"], dpo_run["config"]
    assert ref.column("prompt_id").to_pylist() == dpo_run["pairs"].column("prompt_id").to_pylist()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    with torch.no_grad():
        chosen, rejected, chosen_len, rejected_len = plain_logps(model, tokenizer, config, dpo_run["pairs"], range(5))
    torch.testing.assert_close(torch.tensor(ref.column("ref_chosen_logp").to_pylist(), dtype=torch.float64),
                               chosen.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor(ref.column("ref_rejected_logp").to_pylist(), dtype=torch.float64),
                               rejected.double(), rtol=1e-5, atol=1e-4)
    assert ref.column("chosen_len").to_pylist() == chosen_len.int().tolist()
    assert ref.column("rejected_len").to_pylist() == rejected_len.int().tolist()
    # At step 1 the policy is θ_t: the trainer's log-probs of the step's pairs are the reference.
    first = dpo_run["metrics"][0]
    step_rows = batch_plan(config, 5).step_indices(0)
    expected = sum(ref.column("ref_chosen_logp")[i].as_py() for i in step_rows) / len(step_rows)
    assert first["logps/chosen"] == pytest.approx(expected, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_first_step_dpo_loss_with_reference_equal_policy_is_ln2(dpo_run):
    assert dpo_run["metrics"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_last_partial_batch_is_trained_and_truncation_counted(dpo_run, tiny_llama_path):
    metrics = dpo_run["metrics"]
    assert [m["step"] for m in metrics] == [1, 2]
    assert [m["pairs"] for m in metrics] == [4, 1]  # 5 pairs, global batch 4: nothing dropped
    plan = batch_plan(dpo_run["config"], 5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    enc = PairEncoder(tokenizer, MAX_PROMPT, MAX_RESPONSE)
    for step, m in enumerate(metrics):
        pairs = [enc.encode(PROMPTS[i], CHOSEN[i], REJECTED[i]) for i in plan.step_indices(step)]
        assert m["truncated_prompts"] == sum(p.prompt_truncated for p in pairs)
        assert m["truncated_responses"] == sum(p.truncated_responses for p in pairs)
    assert sum(m["truncated_prompts"] for m in metrics) == 1
    assert sum(m["truncated_responses"] for m in metrics) >= 1


def test_metrics_lines_carry_every_field(dpo_run):
    expected = {"step", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "logps/rejected", "s_ref/mean",
                "s_ref/agreement", "grad_norm", "lr", "tokens", "tokens_per_s", "seconds",
                "pairs", "truncated_prompts", "truncated_responses"}
    for m in dpo_run["metrics"]:
        assert expected <= set(m), expected - set(m)
        assert m["lr"] == pytest.approx(1e-3) and m["tokens_per_s"] > 0
    assert dpo_run["result"]["metrics"] == dpo_run["metrics"][-1]


def test_two_worker_fsdp2_matches_single_process_pytorch(dpo_run, tiny_llama_path):
    """The same two AdamW steps (4 pairs, then the 1-pair tail) in plain PyTorch.

    Tolerance: every weight within 1e-5 (1% of one Adam step at lr 1e-3) and all but 0.01% of
    them within 1e-7: fp32 sums run in another order across shards and micro-batches.
    """
    expected, grad_norms = plain_train(tiny_llama_path, dpo_run["config"], dpo_run["pairs"],
                                       dpo_run["ref"])
    assert [m["grad_norm"] for m in dpo_run["metrics"]] == pytest.approx(grad_norms, rel=1e-4)
    trained = AutoModelForCausalLM.from_pretrained(str(dpo_run["out"] / "model"), dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    assert_weights_match(trained.state_dict(), expected, initial.state_dict())


def test_trained_model_is_committed_and_loads_in_transformers(dpo_run):
    out = Path(dpo_run["out"] / "model")
    manifest = verify_checkpoint(str(out))
    names = {e["path"] for e in manifest["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 2
    assert list((dpo_run["out"] / "ray").iterdir()) == []  # a finished run keeps no resume state


@pytest.mark.slow  # its own Ray Train worker group: 30-90 s on 2 shared cores
def test_reference_free_loss_trains_without_ref_logps(ray_cluster, tiny_llama_path, tmp_path):
    config = make_config(tiny_llama_path, num_workers=1, global_batch_size=5, micro_batch_size=5)
    config.loss = LossConfig(name="simpo")
    pairs = make_pairs()
    result = train_policy(config, pairs, None, tiny_llama_path, output_uri=str(tmp_path / "model"),
                          metrics_uri=str(tmp_path / "metrics.jsonl"),
                          storage_path=str(tmp_path / "ray"))
    metrics = result["metrics"]
    assert metrics["step"] == 1 and metrics["pairs"] == 5
    assert "s_ref/mean" not in metrics  # nothing of a reference anywhere
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    with torch.no_grad():
        chosen, rejected, chosen_len, rejected_len = plain_logps(model, tokenizer, config, pairs,
                                                                 range(5))
        out = build_loss("simpo")(PairLogps(chosen, rejected, None, None, chosen_len, rejected_len))
    assert metrics["loss"] == pytest.approx(float(out.losses.mean()), abs=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(float(out.metrics["rewards/margins"]), abs=1e-5)
    verify_checkpoint(str(tmp_path / "model"))


def test_single_fp32_worker_trains_unwrapped_and_matches_single_process_pytorch(
    ray_cluster, tiny_llama_path, tmp_path
):
    """One worker in fp32 skips FSDP2 (no second, unsharded copy of the weights); the two
    AdamW steps, with gradient accumulation over 2 micro-batches, must still be plain PyTorch's."""
    config = make_config(tiny_llama_path, num_workers=1, micro_batch_size=2, adam_eps=ADAM_EPS)
    pairs = make_pairs()
    ref = compute_ref_logps(config, pairs, tiny_llama_path)
    result = train_policy(config, pairs, ref, tiny_llama_path, output_uri=str(tmp_path / "model"),
                          metrics_uri=str(tmp_path / "metrics.jsonl"),
                          storage_path=str(tmp_path / "ray"))
    expected, grad_norms = plain_train(tiny_llama_path, config, pairs, ref)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["grad_norm"] for ln in lines] == pytest.approx(grad_norms, rel=1e-4)
    assert result["metrics"]["step"] == 2
    trained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"), dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    assert_weights_match(trained.state_dict(), expected, initial.state_dict())
