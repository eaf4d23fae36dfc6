"""Trainer variants on length-skewed pairs: padded vs packed micro-batches, full vs LoRA.

Each variant runs the Ray Train worker's own step (`loop.build_worker` + `loop._train_step`, one
fp32 rank on a 1-rank gloo group: unwrapped) in a fresh process, for its own peak RSS. The pairs'
responses range from a few tokens to a few hundred, so a padded micro-batch spends most of its
rows on padding; packing puts the sequences back to back and computes only real tokens. Figures:
real tokens/s and s/step over the steady steps (the first step is warm-up), peak RSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.common import apply_env, emit, peak_rss_mib, ratio, run_worker, write_result

MODULE = "benchmarks.training_variants"
MODEL = "builtin:smollm2-135m-instruct"
NUM_PAIRS = int(os.environ.get("AIPO_BENCH_VARIANT_PAIRS", "12"))
STEPS = 3  # global batch 4 × micro 4: one forward per step; step 1 is warm-up
VARIANTS = {"padded": {}, "packed": {"packing": True},
            "lora_padded": {"lora": {"rank": 16, "alpha": 32.0}}}


def skewed_pairs(n: int):
    """`n` pairs whose chosen responses grow geometrically (8 → 160 words), rejected short:
    the length spread the paper reports between chosen and rejected, exaggerated."""
    import pyarrow as pa

    from aipo_ray.storage import make_prompt_id

    prompts = [f"Question {i}: explain topic number {i} in detail." for i in range(n)]
    words = [int(8 * (160 / 8) ** (i / max(n - 1, 1))) for i in range(n)]
    chosen = [" ".join(f"point{j}" for j in range(w)) for w in words]
    rejected = [f"No idea about {i}." for i in range(n)]
    # Long and short pairs alternate, so every micro-batch mixes them.
    order = [i // 2 if i % 2 == 0 else n - 1 - i // 2 for i in range(n)]
    cols = {"prompt": [prompts[i] for i in order], "chosen": [chosen[i] for i in order],
            "rejected": [rejected[i] for i in order]}
    return pa.table({"prompt_id": [make_prompt_id(p) for p in cols["prompt"]], **cols,
                     "chosen_score": [1.0] * n, "rejected_score": [0.0] * n,
                     "ref_chosen_logp": [0.0] * n, "ref_rejected_logp": [0.0] * n})


def make_config(**training):
    from aipo_ray.config import LossConfig, ModelConfig, RunConfig, TrainingConfig
    from aipo_ray.config.generation import GenerationConfig

    return RunConfig(
        model=ModelConfig(path=MODEL), loss=LossConfig(name="dpo", beta=0.1),
        generation=GenerationConfig(max_tokens=1024),
        training=TrainingConfig(
            num_workers=1, global_batch_size=4, micro_batch_size=4, learning_rate=1e-5,
            lr_scheduler="constant", warmup_ratio=0.0, max_response_length=1024, **training),
    )


def run_variant(name: str) -> dict:
    import torch

    from aipo_ray.training.loop import _train_step, build_worker
    from benchmarks.train_vs_trl import init_single_rank_group

    init_single_rank_group()
    config = make_config(**VARIANTS[name])
    w = build_worker(config, skewed_pairs(NUM_PAIRS), MODEL, 0, 1, torch.device("cpu"))
    trainable = sum(p.numel() for p in w.model.parameters() if p.requires_grad)
    seconds, tokens = [], []
    for step in range(STEPS):
        started = time.perf_counter()
        metrics = _train_step(w, step)
        seconds.append(time.perf_counter() - started)
        tokens.append(metrics["tokens"])
    steady = slice(1, None)
    return {"step_seconds": seconds, "tokens": tokens, "peak_rss_mib": peak_rss_mib(),
            "trainable_params": trainable,
            "tokens_per_s": sum(tokens[steady]) / sum(seconds[steady]),
            "steady_step_seconds": sum(seconds[steady]) / len(seconds[steady])}


def main() -> None:
    apply_env()
    runs = {name: run_worker(MODULE, "--variant", name) for name in VARIANTS}
    pad, pack, lora = runs["padded"], runs["packed"], runs["lora_padded"]
    figures = {
        **{f"{k}_{name}": r[k] for name, r in runs.items()
           for k in ("tokens_per_s", "steady_step_seconds", "peak_rss_mib", "trainable_params")},
        "packed_over_padded_tokens_per_s": ratio(pack["tokens_per_s"], pad["tokens_per_s"]),
        "lora_over_full_step_seconds": ratio(lora["steady_step_seconds"],
                                             pad["steady_step_seconds"]),
        "lora_over_full_peak_rss": ratio(lora["peak_rss_mib"], pad["peak_rss_mib"]),
    }
    write_result("training_variants", {"model": MODEL, "pairs": NUM_PAIRS, "steps": STEPS,
                                       "micro_batch": 4, "lora_rank": 16}, figures, runs=runs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    args = parser.parse_args()
    if args.variant:
        apply_env()
        emit(run_variant(args.variant))
    else:
        main()
    sys.exit(0)
