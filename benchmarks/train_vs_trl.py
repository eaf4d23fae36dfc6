"""Our DPO trainer step vs TRL's DPOTrainer: same model, pairs, β, batch, lr and order, on CPU.

Each side runs in its own process (clean peak RSS), one after the other. Ours runs the exact
per-step function of the Ray Train worker (`aipo_ray.training.loop._train_step`: the model
wrapped as `shard_model` wraps it for one fp32 worker on a 1-rank gloo group, i.e. unwrapped;
chunked log-probs, clipping, AdamW) without the Ray Train actor around it, so per-step time and
RSS are the trainer's own; what Ray adds is measured by `iteration_split`.
Reference log-probs are precomputed on both sides before the timed steps: ours by the
ref_logps stage's scorer in a separate process (as in the pipeline), TRL's by
`precompute_ref_log_probs=True`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import apply_env, emit, peak_rss_mib, ratio, run_worker, write_result

MODULE = "benchmarks.train_vs_trl"
MODEL = "builtin:smollm2-135m-instruct"
# `make bench` trains on 64 pairs; AIPO_BENCH_PAIRS / _BATCH shrink the run on a busy machine
# (the sizes used are written into the results file).
NUM_PAIRS = int(os.environ.get("AIPO_BENCH_PAIRS", "64"))
GLOBAL_BATCH = int(os.environ.get("AIPO_BENCH_BATCH", "8"))
MICRO_BATCH, BETA, LR = GLOBAL_BATCH // 2, 0.1, 1e-5
# Absolute, on each step's mean loss: fp32 on both sides, summed in a different order.
LOSS_TOLERANCE = 1e-4
TIMEOUT = 1800  # seconds per side's process


def make_config(steps: int):
    from aipo_ray.config import LossConfig, ModelConfig, RunConfig, TrainingConfig

    return RunConfig(
        model=ModelConfig(path=MODEL), loss=LossConfig(name="dpo", beta=BETA),
        training=TrainingConfig(
            num_workers=1, global_batch_size=GLOBAL_BATCH, micro_batch_size=MICRO_BATCH,
            learning_rate=LR, lr_scheduler="constant", warmup_ratio=0.0, max_grad_norm=1.0,
            num_epochs=math.ceil(steps * GLOBAL_BATCH / NUM_PAIRS), seed=0,
        ),
    )


def pairs_table():
    import pyarrow as pa

    from benchmarks.pairs import make_pairs

    return pa.table(make_pairs(NUM_PAIRS))


def run_reference(out: str) -> dict:
    """The ref_logps stage's scorer over all pairs; written to `out` for the training side."""
    import pyarrow.parquet as pq

    from aipo_ray.models import resolve_model_path
    from aipo_ray.training.reference import ReferenceScorer

    config = make_config(1)
    scorer = ReferenceScorer(config, resolve_model_path(MODEL, config.storage), MICRO_BATCH)
    table = pairs_table()
    started = time.perf_counter()
    ref = scorer({k: table.column(k).to_numpy(zero_copy_only=False) for k in table.column_names})
    seconds = time.perf_counter() - started
    import pyarrow as pa

    pq.write_table(pa.table(ref), out)
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def init_single_rank_group(backend: str = "gloo") -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 20000))
    dist.init_process_group(backend, rank=0, world_size=1)


def build_worker(config, table, model_uri: str = MODEL, device: str = "cpu"):
    """What `loop._setup` builds on a Ray Train worker, on a 1-rank process group."""
    import torch

    from aipo_ray.training.loop import build_worker as worker

    return worker(config, table, model_uri, 0, 1, torch.device(device))


def run_ours(steps: int, ref_path: str, profile: str | None) -> dict:
    import pyarrow.parquet as pq

    from aipo_ray.training.loop import _train_step
    from aipo_ray.training.plan import join_reference

    init_single_rank_group()
    config = make_config(steps)
    table = join_reference(pairs_table(), pq.read_table(ref_path))
    w = build_worker(config, table)
    losses, seconds = [], []
    for step in range(steps):
        started = time.perf_counter()
        if profile and step == 1:
            metrics = _profiled_step(lambda s=step: _train_step(w, s), profile)
        else:
            metrics = _train_step(w, step)
        seconds.append(time.perf_counter() - started)
        losses.append(metrics["loss"])
    return {"losses": losses, "step_seconds": seconds, "peak_rss_mib": peak_rss_mib(),
            "num_params": w.num_params, "ref_chosen_logps": table.column("ref_chosen_logp").to_pylist()}


def _profiled_step(fn, out: str):
    """torch.profiler over one step (its time then includes profiling); top ops go to `out`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    Path(out).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return result


def trl_dataset(order: list[int]):
    from datasets import Dataset

    cols = pairs_table().to_pydict()
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": cols["prompt"][i]}] for i in order],
        "chosen": [[{"role": "assistant", "content": cols["chosen"][i]}] for i in order],
        "rejected": [[{"role": "assistant", "content": cols["rejected"][i]}] for i in order],
    })


def run_trl(steps: int, out_dir: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from aipo_ray.models import resolve_model_path
    from aipo_ray.training.trainer import batch_plan

    config = make_config(steps)
    path = resolve_model_path(MODEL, config.storage)
    # Our plan's order for epoch 0, fed sequentially: both sides see the same pairs per step
    # and per micro-batch (so the same padding too).
    order = batch_plan(config, NUM_PAIRS).epoch_order(0)
    args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GLOBAL_BATCH // MICRO_BATCH, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=BETA,
        loss_type=["sigmoid"], max_steps=steps, precompute_ref_log_probs=True, use_cpu=True,
        optim="adamw_torch", weight_decay=0.0, adam_epsilon=1e-8, logging_steps=1,
        report_to=[], save_strategy="no", train_sampling_strategy="sequential",
        dataloader_num_workers=0, seed=0, max_length=None, disable_tqdm=True,
        # TRL's own defaults differ from TrainingArguments': bf16 autocast on (CPU included) and
        # gradient checkpointing on. Ours runs fp32 without checkpointing on CPU, so turn both
        # off: same numerics, and speed and memory compared like for like.
        bf16=False, gradient_checkpointing=False,
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    times = step_timer()
    trainer = DPOTrainer(model=model, args=args, train_dataset=trl_dataset(order),
                         processing_class=tokenizer, callbacks=[times])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    ref = trainer.train_dataset["ref_chosen_logps"]
    by_pair = [0.0] * NUM_PAIRS
    for position, i in enumerate(order):
        by_pair[i] = float(ref[position])
    return {"losses": losses, "step_seconds": times.seconds, "peak_rss_mib": peak_rss_mib(),
            "ref_chosen_logps": by_pair}


def step_timer():
    """A TrainerCallback recording each optimizer step's wall time (accumulation included)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimes()


def steady(seconds: list[float]) -> float:
    """Mean step time without the first step (allocator and thread-pool warm-up)."""
    rest = seconds[1:] or seconds
    return sum(rest) / len(rest)


def summarise(ours: dict, trl: dict, ref: dict, steps: int) -> dict:
    diffs = [abs(a - b) for a, b in zip(ours["losses"], trl["losses"], strict=False)]
    ref_diff = max(abs(a - b) for a, b in zip(ours["ref_chosen_logps"], trl["ref_chosen_logps"],
                                              strict=True))
    return {
        "step1_loss_ours": ours["losses"][0], "step1_loss_trl": trl["losses"][0],
        "ln2": math.log(2), "losses_ours": ours["losses"], "losses_trl": trl["losses"],
        "max_abs_loss_diff": max(diffs), "loss_tolerance": LOSS_TOLERANCE,
        "losses_equal_within_tolerance": max(diffs) <= LOSS_TOLERANCE,
        "max_abs_ref_logp_diff": ref_diff,
        "step_seconds_ours": ours["step_seconds"], "step_seconds_trl": trl["step_seconds"],
        "steady_step_seconds_ours": steady(ours["step_seconds"]),
        "steady_step_seconds_trl": steady(trl["step_seconds"]),
        "step_time_ratio_ours_over_trl": ratio(steady(ours["step_seconds"]),
                                               steady(trl["step_seconds"])),
        "peak_rss_mib_ours": ours["peak_rss_mib"], "peak_rss_mib_trl": trl["peak_rss_mib"],
        "peak_rss_ratio_ours_over_trl": ratio(ours["peak_rss_mib"], trl["peak_rss_mib"]),
        "reference_pass_seconds_ours": ref["seconds"],
    }


def main(steps: int = 4) -> dict:
    """Reference pass, our steps, then TRL's, one after the other, each in its own process (so
    peak RSS stays per side and each side has every core to itself)."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ref_path = str(Path(tmp) / "ref.parquet")
        ref = run_worker(MODULE, "--side", "ref", "--out", ref_path, timeout=TIMEOUT)
        ours = run_worker(MODULE, "--side", "ours", "--steps", str(steps), "--ref", ref_path,
                          timeout=TIMEOUT)
        trl = run_worker(MODULE, "--side", "trl", "--steps", str(steps), "--out", tmp,
                         timeout=TIMEOUT)
    figures = summarise(ours, trl, ref, steps)
    sizes = {"model": MODEL, "num_params": ours["num_params"], "pairs": NUM_PAIRS,
             "global_batch": GLOBAL_BATCH, "micro_batch": MICRO_BATCH, "beta": BETA, "lr": LR,
             "steps": steps, "dtype": "float32", "device": "cpu",
             "sides_run": "one after the other",
             "ours_entry": "aipo_ray.training.loop._train_step on a 1-rank gloo group (one fp32 "
                           "worker: plain module, no FSDP2), no Ray actor"}
    write_result("train_vs_trl", sizes, figures, raw={"ours": ours, "trl": trl, "ref": ref})
    return figures


def _worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=("ref", "ours", "trl"), required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ref")
    parser.add_argument("--out")
    parser.add_argument("--profile", help="ours: write a torch.profiler table of step 2 here")
    a = parser.parse_args(argv)
    apply_env()
    if a.side == "ref":
        emit(run_reference(a.out))
    elif a.side == "ours":
        emit(run_ours(a.steps, a.ref, a.profile))
    else:
        emit(run_trl(a.steps, a.out))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _worker(sys.argv[1:])
    else:
        print(json.dumps(main(), indent=2))
