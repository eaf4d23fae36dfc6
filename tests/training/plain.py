"""The single-process, plain-PyTorch version of a training run: what the trainer must reproduce.

Log-probs come from full-vocabulary logits of the plain Hugging Face forward (not the chunked
gather), the loss from `aipo_ray.losses`, then clip_grad_norm_ and torch AdamW.
"""

import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aipo_ray.config import RunConfig
from aipo_ray.losses import PairLogps, build_loss
from aipo_ray.training import PairEncoder, collate_pairs
from aipo_ray.training.logps import full_vocab_response_logps
from aipo_ray.training.trainer import batch_plan


def plain_logps(model, tokenizer, config: RunConfig, pairs: pa.Table, rows):
    enc = PairEncoder(tokenizer, config.training.max_prompt_length,
                      config.training.max_response_length)
    cols = {k: pairs.column(k).to_pylist() for k in ("prompt", "chosen", "rejected")}
    encoded = enc.encode_many(*([cols[k][i] for i in rows] for k in ("prompt", "chosen", "rejected")))
    batch = collate_pairs(encoded, enc.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logps = full_vocab_response_logps(logits, batch.input_ids, batch.response_mask)
    lengths = batch.response_mask.sum(-1).float()
    b = len(rows)
    return logps[:b], logps[b:], lengths[:b], lengths[b:]


def plain_train(model_path: str, config: RunConfig, pairs: pa.Table, ref: pa.Table):
    """(final state dict, grad norm per step) of the whole run, in one process."""
    t = config.training
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, eps=t.adam_eps,
                                  betas=t.adam_betas, weight_decay=t.weight_decay, foreach=False)
    loss_fn = build_loss(config.loss.name, **config.loss.resolved_hparams())
    ref_c, ref_r = (torch.tensor(ref.column(k).to_pylist(), dtype=torch.float32)
                    for k in ("ref_chosen_logp", "ref_rejected_logp"))
    plan = batch_plan(config, pairs.num_rows)
    assert t.lr_scheduler == "constant" and t.warmup_ratio == 0, "plain_train has no schedule"
    grad_norms = []
    for step in range(plan.total_steps):
        rows = plan.step_indices(step)
        chosen, rejected, chosen_len, rejected_len = plain_logps(model, tokenizer, config, pairs, rows)
        batch = PairLogps(chosen, rejected, ref_c[rows], ref_r[rows], chosen_len, rejected_len)
        loss_fn(batch).losses.mean().backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)))
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict(), grad_norms


def assert_weights_match(trained: dict, expected: dict, initial: dict) -> None:
    """Every weight within 1e-5 (1% of one Adam step at lr 1e-3), all but 0.01% within 1e-7,
    and every tensor moved from its initial value."""
    loose, total = 0, 0
    for name, tensor in trained.items():
        diff = (tensor - expected[name]).abs()
        assert diff.max() <= 1e-5, f"{name}: max |Δ| {diff.max():.3g}"
        loose += int((diff > 1e-7).sum())
        total += diff.numel()
        assert not torch.equal(tensor, initial[name]), f"{name} was not trained"
    assert loose <= 1e-4 * total, f"{loose} of {total} weights differ by more than 1e-7"
