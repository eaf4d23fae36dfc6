"""LoRA: one trainer step equals a plain peft + PyTorch step; the merged model is a plain one.

The trainer's step runs in this process on a 1-rank gloo group (`build_worker` + `_train_step`,
what each Ray Train worker runs); the two-worker FSDP2 run through Ray Train is marked slow.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from aipo_ray.losses import PairLogps, build_loss
from aipo_ray.training.loop import _train_step, build_worker
from aipo_ray.training.lora import init_adapters, merge_lora_state, peft_config
from aipo_ray.training.plan import join_reference
from aipo_ray.training.trainer import batch_plan

from .plain import plain_logps
from .test_trainer_on_cpu import ADAM_EPS, make_config, make_pairs

LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture(scope="module")
def process_group():
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 20000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield


def _reference(model, tokenizer, config, pairs: pa.Table) -> pa.Table:
    """θ_t's log-probs of every pair (what the ref_logps stage precomputes)."""
    with torch.no_grad():
        c, r, cl, rl = plain_logps(model, tokenizer, config, pairs, range(pairs.num_rows))
    return pa.table({"prompt_id": pairs.column("prompt_id"), "ref_chosen_logp": c.tolist(),
                     "ref_rejected_logp": r.tolist(), "chosen_len": cl.int().tolist(),
                     "rejected_len": rl.int().tolist()})


def _plain_peft_step(model_path, config, pairs, ref):
    """One AdamW step of the adapters with peft and PyTorch alone; (loss, peft model)."""
    t = config.training
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, peft_config(t.lora))
    init_adapters(model.base_model.model, t.seed)  # the trainer's seeded A (B = 0, as peft's)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, eps=t.adam_eps,
                                  betas=t.adam_betas, weight_decay=t.weight_decay, foreach=False)
    rows = batch_plan(config, pairs.num_rows).step_indices(0)
    chosen, rejected, c_len, r_len = plain_logps(model, tokenizer, config, pairs, rows)
    ref_c, ref_r = (torch.tensor([ref.column(k)[i].as_py() for i in rows])
                    for k in ("ref_chosen_logp", "ref_rejected_logp"))
    loss_fn = build_loss(config.loss.name, **config.loss.resolved_hparams())
    loss = loss_fn(PairLogps(chosen, rejected, ref_c, ref_r, c_len, r_len)).losses.mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
    optimizer.step()
    return float(loss), model


def test_one_lora_step_equals_a_plain_peft_step(process_group, tiny_llama_path):
    config = make_config(tiny_llama_path, num_workers=1, micro_batch_size=2, adam_eps=ADAM_EPS,
                         lora=LORA)
    pairs = make_pairs()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    ref = _reference(base, tokenizer, config, pairs)
    w = build_worker(config, join_reference(pairs, ref), tiny_llama_path, 0, 1,
                     torch.device("cpu"))
    metrics = _train_step(w, 0)  # 4 pairs in 2 micro-batches of 2

    loss, expected = _plain_peft_step(tiny_llama_path, config, pairs, ref)
    assert metrics["loss"] == pytest.approx(loss, abs=1e-6)
    ours = dict(w.causal_lm.named_parameters())
    adapters = {n: p for n, p in expected.base_model.model.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * 7 * 2  # A and B of 7 linear layers in each of 2 layers
    for name, param in adapters.items():
        torch.testing.assert_close(ours[name].detach(), param.detach(), rtol=0, atol=1e-6)
        if "lora_B" in name:
            assert param.abs().max() > 0, f"{name} was not trained"
    for name, param in ours.items():  # the base weights are frozen: θ_t stays the reference
        if "lora_" not in name:
            assert not param.requires_grad and param.grad is None, name

    # The merged state dict is peft's merge_and_unload, under the plain model's names.
    merged = merge_lora_state(w.causal_lm.state_dict(), config.training.lora)
    plain = expected.merge_and_unload().state_dict()
    assert merged.keys() == plain.keys()
    for name, tensor in plain.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6)
    changed = [n for n in plain if not torch.equal(plain[n], base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted linear layers


@pytest.mark.slow  # a Ray Train worker group: 30-90 s on 2 shared cores
def test_two_worker_fsdp2_lora_step_commits_the_merged_plain_model(ray_cluster, tiny_llama_path,
                                                                   tmp_path):
    """2 gloo workers, FSDP2 over frozen base weights and trainable adapters: the staged model
    is peft's merge of one plain step, saved as a plain checkpoint transformers loads."""
    from aipo_ray.storage.checkpoint import verify_checkpoint
    from aipo_ray.training.trainer import train_policy

    config = make_config(tiny_llama_path, num_workers=2, adam_eps=ADAM_EPS, lora=LORA)
    pairs = make_pairs().slice(0, 4)  # one step of 4 pairs: 2 workers × micro 1 × accum 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    ref = _reference(base, tokenizer, config, pairs)
    result = train_policy(config, pairs, ref, tiny_llama_path, output_uri=str(tmp_path / "model"),
                          metrics_uri=str(tmp_path / "metrics.jsonl"),
                          storage_path=str(tmp_path / "ray"))
    loss, expected = _plain_peft_step(tiny_llama_path, config, pairs, ref)
    assert result["metrics"]["loss"] == pytest.approx(loss, abs=1e-6)
    verify_checkpoint(str(tmp_path / "model"))
    trained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"), dtype=torch.float32)
    plain = expected.merge_and_unload().state_dict()
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(tensor, plain[name], rtol=0, atol=1e-6)
