"""What each Ray Train worker runs: FSDP2 policy, optimizer steps, metrics, resumable state."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
import torch.distributed as dist

from aipo_ray.config import RunConfig
from aipo_ray.losses import PairLogps, PreferenceLoss, build_loss
from aipo_ray.models import load_causal_lm, load_tokenizer, resolve_model_path
from aipo_ray.models.loading import trust_remote_code

from .batching import EncodedPair, PairEncoder, collate_pairs
from .fsdp import clip_grad_norm, full_state_dict, set_gradient_sync, shard_model, wraps
from .logps import SequenceLogps
from .lora import adapter_init, apply_lora, merge_lora_state, trainable_parameters
from .metrics import (
    MetricsLog,
    gather_pair_records,
    peak_flops,
    peak_memory_mib,
    step_loss_metrics,
    sum_across_workers,
)
from .model_io import compute_dtype, make_encoder
from .optim import build_optimizer, build_scheduler
from .plan import BatchPlan
from .sharded_load import empty_causal_lm, has_safetensors, load_sharded_weights

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"


@dataclass
class Worker:
    """One rank's view of the run; built once per (re)start of the worker group."""

    config: RunConfig
    rank: int
    world: int
    device: torch.device
    model: Any  # SequenceLogps under FSDP2
    causal_lm: Any
    tokenizer: Any
    encoder: PairEncoder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: PreferenceLoss
    plan: BatchPlan
    columns: dict[str, list]
    num_params: int
    encoded: dict[int, EncodedPair] = field(default_factory=dict)

    def pair(self, i: int) -> EncodedPair:
        if i not in self.encoded:
            c = self.columns
            self.encoded[i] = self.encoder.encode(c["prompt"][i], c["chosen"][i], c["rejected"][i])
        return self.encoded[i]


def _policy(config: RunConfig, policy_uri: str, world: int, device: torch.device,
            param_dtype: torch.dtype):
    """(tokenizer, causal LM, SequenceLogps model, parameter count) of θ_t on this rank.

    Where FSDP2 shards the model, each rank builds it on the meta device (LoRA adapters
    included) and reads only its shards (sharded_load); adapters get their rows of the
    name-seeded initialisation, so they equal an unsharded run's.
    """
    t = config.training
    model_dir = resolve_model_path(policy_uri, config.storage)  # verified once, here
    tokenizer = load_tokenizer(config.model, model_dir, config.storage)
    if wraps(t, world, device, param_dtype) and has_safetensors(model_dir):
        causal_lm = empty_causal_lm(model_dir, trust_remote_code(config.model))
        num_params = sum(p.numel() for p in causal_lm.parameters())
        if t.lora.enabled:
            causal_lm = apply_lora(causal_lm, t.lora, t.seed)
        model = SequenceLogps(causal_lm, t.logps_chunk_size)
        shard_model(model, causal_lm, t, device, param_dtype)
        offload = t.cpu_offload and device.type == "cuda"
        load_sharded_weights(causal_lm, model_dir, torch.device("cpu") if offload else device,
                             init=lambda name, shape: adapter_init(name, shape, t.seed))
        return tokenizer, causal_lm, model, num_params
    causal_lm = load_causal_lm(config.model, model_dir, torch.float32)  # fp32 master weights
    num_params = sum(p.numel() for p in causal_lm.parameters())
    if t.lora.enabled:
        causal_lm = apply_lora(causal_lm, t.lora, t.seed)
    model = SequenceLogps(causal_lm, t.logps_chunk_size)
    shard_model(model, causal_lm, t, device, param_dtype)
    return tokenizer, causal_lm, model, num_params


def build_worker(config: RunConfig, table: pa.Table, policy_uri: str, rank: int, world: int,
                 device: torch.device) -> Worker:
    """One rank's model (LoRA adapters if configured, FSDP2 where it applies), optimizer and plan.

    Needs an initialised process group (Ray Train's, or a 1-rank one in tests and benchmarks).
    """
    t = config.training
    torch.manual_seed(t.seed)
    param_dtype = compute_dtype(config, device.type == "cuda")
    tokenizer, causal_lm, model, num_params = _policy(config, policy_uri, world, device,
                                                      param_dtype)
    model.train()
    plan = BatchPlan(table.num_rows, t.global_batch_size, t.micro_batch_size, world,
                     t.num_epochs, t.seed)
    optimizer = build_optimizer(trainable_parameters(model), t)
    return Worker(
        config=config, rank=rank, world=world, device=device,
        model=model, causal_lm=causal_lm, tokenizer=tokenizer,
        encoder=make_encoder(config, tokenizer), optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, plan.total_steps),
        loss_fn=build_loss(config.loss.name, **config.loss.resolved_hparams()), plan=plan,
        columns=table.to_pydict(), num_params=num_params,
    )


def _setup(loop_cfg: dict) -> Worker:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the device mesh and NCCL use the current device
    return build_worker(loop_cfg["config"], ray.get(loop_cfg["table"]), loop_cfg["policy_uri"],
                        ctx.get_world_rank(), ctx.get_world_size(), device)


def _micro_step(w: Worker, micro: list[tuple[int, float]], scale: float, sync: bool):
    """Forward + backward of one micro-batch; returns its [n, 7] records and real-pair counters."""
    idx = [i for i, _ in micro]
    weights = torch.tensor([wt for _, wt in micro], dtype=torch.float32, device=w.device)
    pairs = [w.pair(i) for i in idx]
    batch = collate_pairs(pairs, w.encoder.pad_token_id,
                          packed=w.config.training.packing).to(w.device)
    set_gradient_sync(w.model, sync)
    chosen, rejected, chosen_len, rejected_len = w.model.pair_logps(batch)
    ref = None
    if w.loss_fn.requires_reference:
        ref = [torch.tensor([w.columns[k][i] for i in idx], dtype=torch.float32, device=w.device)
               for k in ("ref_chosen_logp", "ref_rejected_logp")]
    out = w.loss_fn(PairLogps(chosen, rejected, *(ref or (None, None)),
                              chosen_len.float(), rejected_len.float()))
    ((out.losses * weights).sum() * scale).backward()
    zeros = torch.zeros_like(weights)
    records = torch.stack([weights, chosen.detach(), rejected.detach(),
                           *(ref or (zeros, zeros)), chosen_len.float(), rejected_len.float()], 1)
    real = [p for p, (_, wt) in zip(pairs, micro, strict=True) if wt > 0]
    counters = {
        "tokens": sum(len(p.prompt) * 2 + len(p.chosen) + len(p.rejected) for p in real),
        "truncated_prompts": sum(int(p.prompt_truncated) for p in real),
        "truncated_responses": sum(p.truncated_responses for p in real),
    }
    return records, counters


def _train_step(w: Worker, step: int) -> dict[str, Any]:
    """One optimizer step over the global batch of `step`; returns its metrics (same on all ranks)."""
    started = time.perf_counter()
    real_pairs = len(w.plan.step_indices(step))
    micro_batches = w.plan.worker_micro_batches(step, w.rank)
    # Gradients are averaged over workers; this scale makes the result the mean over real pairs.
    scale = w.world / real_pairs
    records, counters = [], {"tokens": 0, "truncated_prompts": 0, "truncated_responses": 0}
    for k, micro in enumerate(micro_batches):
        rec, cnt = _micro_step(w, micro, scale, sync=k == len(micro_batches) - 1)
        records.append(rec)
        counters = {key: counters[key] + cnt[key] for key in counters}
    grad_norm = clip_grad_norm(w.model, w.config.training.max_grad_norm)
    lr = w.scheduler.get_last_lr()[0]
    w.optimizer.step()
    w.scheduler.step()
    w.optimizer.zero_grad(set_to_none=True)
    metrics = step_loss_metrics(gather_pair_records(torch.cat(records)).double().cpu(), w.loss_fn)
    counters = sum_across_workers(counters, w.device)
    seconds = time.perf_counter() - started
    epoch = step // w.plan.steps_per_epoch + 1
    metrics.update(
        step=step + 1, epoch=epoch, pairs=real_pairs, grad_norm=grad_norm, lr=lr,
        seconds=seconds, tokens=int(counters["tokens"]),
        tokens_per_s=counters["tokens"] / seconds,
        truncated_prompts=int(counters["truncated_prompts"]),
        truncated_responses=int(counters["truncated_responses"]),
    )
    metrics.update(peak_memory_mib(w.device))  # rank 0's, as every figure of the line
    peak = peak_flops(w.device)
    if peak:
        metrics["mfu"] = 6 * w.num_params * counters["tokens"] / seconds / (peak * w.world)
    return metrics


def _save_resume_checkpoint(w: Worker, step: int):
    """Sharded model + optimizer (torch DCP) and the step/scheduler state, as a Ray checkpoint."""
    import torch.distributed.checkpoint as dcp
    from ray.train import Checkpoint
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = tempfile.mkdtemp(prefix="aipo-resume-")
    model_sd, optim_sd = get_state_dict(w.model, w.optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=directory)
    if w.rank == 0:
        state = {"step": step, "scheduler": w.scheduler.state_dict()}
        with open(os.path.join(directory, TRAINER_STATE), "w") as f:
            json.dump(state, f)
    return Checkpoint.from_directory(directory)


def _restore(w: Worker) -> int:
    """Load the last Ray Train checkpoint (after a worker failure); returns the steps already done."""
    import ray.train
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        model_sd, optim_sd = get_state_dict(w.model, w.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=directory)
        set_state_dict(w.model, w.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        with open(os.path.join(directory, TRAINER_STATE)) as f:
            trainer_state = json.load(f)
    w.scheduler.load_state_dict(trainer_state["scheduler"])
    print(f"[aipo train] rank {w.rank}: resumed after step {trainer_state['step']}", flush=True)
    return int(trainer_state["step"])


def _save_final(w: Worker, output_uri: str) -> None:
    """Gather the full state dict; rank 0 saves safetensors + tokenizer and stages them with a
    manifest: next to a local output and renamed onto it, or uploaded to s3://.

    The bytes are written once: the commit stage renames (or copies server-side) them.
    """
    from aipo_ray.storage.promote import scratch_dir, stage_checkpoint

    state = full_state_dict(w.causal_lm)
    lora = w.config.training.lora
    if w.rank == 0 and lora.enabled:  # θ_{t+1} is a plain checkpoint: adapters merged
        state = merge_lora_state(state, lora)
    if w.rank == 0:
        with tempfile.TemporaryDirectory(prefix=".aipo-model-", dir=scratch_dir(output_uri)) as d:
            staging = os.path.join(d, "model")
            w.causal_lm.save_pretrained(staging, state_dict=state, safe_serialization=True)
            w.tokenizer.save_pretrained(staging)
            stage_checkpoint(staging, output_uri, w.config.storage)
    dist.barrier()


def train_loop_per_worker(loop_cfg: dict) -> None:
    """The Ray Train entry point; `loop_cfg` is built by `aipo_ray.training.trainer.train_policy`."""
    import ray.train
    from tqdm import tqdm

    w = _setup(loop_cfg)
    start = _restore(w)
    every = w.config.training.checkpoint_every_steps
    metrics_log = (MetricsLog(loop_cfg["metrics_uri"], w.config.storage, resume_after_step=start)
                   if w.rank == 0 else None)
    if w.rank == 0:
        print(f"[aipo train] {w.plan.describe()}", flush=True)
    bar = tqdm(total=w.plan.total_steps, initial=start, desc="train", disable=w.rank != 0)
    for step in range(start, w.plan.total_steps):
        metrics = _train_step(w, step)
        if metrics_log is not None:
            metrics_log.append(metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", margin=f"{metrics['rewards/margins']:.3f}")
        last = step + 1 == w.plan.total_steps
        checkpoint = (_save_resume_checkpoint(w, step + 1)
                      if every and (step + 1) % every == 0 and not last else None)
        ray.train.report(metrics, checkpoint=checkpoint)
    bar.close()
    _save_final(w, loop_cfg["output_uri"])
