"""The trainer the pipeline runs, end to end, vs TRL's DPOTrainer: one iteration's training.

Ours: the ref_logps stage's scorer, then `train_policy` — Ray Train's worker group (one fp32
CPU worker: unwrapped, as the pipeline runs it on one core slot), the TrainStage's data path
(pairs joined with reference log-probs in the object store), every optimizer step, the final
gather, save and staged upload with manifest. TRL: model load, `DPOTrainer` with
`precompute_ref_log_probs=True`, `train()`, `save_model`. Same model, pairs, β, batch, lr,
order as `train_vs_trl` (which times the bare step and stays the second row). Each side in its
own process; peak RSS per process (ours: the driver and the Ray Train worker, from the
trainer's own `memory/peak_rss_mib` metric).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import apply_env, emit, peak_rss_mib, ratio, run_worker, write_result
from benchmarks.train_vs_trl import (
    GLOBAL_BATCH,
    MICRO_BATCH,
    MODEL,
    NUM_PAIRS,
    TIMEOUT,
    make_config,
    pairs_table,
    run_reference,
    run_trl,
    steady,
)

MODULE = "benchmarks.trainer_e2e"
CORES = os.cpu_count() or 1


def run_pipeline_trainer(steps: int, out: str) -> dict:
    """Reference pass + `train_policy` as the ref_logps and train stages call them."""
    import pyarrow.parquet as pq

    from aipo_ray.config import RayConfig
    from aipo_ray.runtime import init_ray
    from aipo_ray.training.trainer import train_policy

    started = time.perf_counter()
    ref_path = str(Path(out) / "ref.parquet")
    ref_seconds = run_reference(ref_path)["seconds"]
    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=CORES, object_store_memory=512 * 2**20))
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = make_config(steps)
    # The one worker gets both cores, as TRL's process does (a worker runs as many torch
    # threads as its CPUs; the default of 1 would halve its compute).
    config.training.cpus_per_worker = float(CORES)
    result = train_policy(config, pairs_table(), pq.read_table(ref_path), MODEL,
                          output_uri=str(Path(out) / "model"),
                          metrics_uri=str(Path(out) / "metrics.jsonl"),
                          storage_path=str(Path(out) / "ray"))
    train_seconds = time.perf_counter() - t0
    lines = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {"end_to_end_seconds": time.perf_counter() - started - ray_start,
            "ray_start_seconds": ray_start, "reference_seconds": ref_seconds,
            "train_policy_seconds": train_seconds, "steps": result["steps"],
            "step_seconds": [m["seconds"] for m in lines], "losses": [m["loss"] for m in lines],
            "peak_rss_mib_driver": peak_rss_mib(),
            "peak_rss_mib_worker": max(m["memory/peak_rss_mib"] for m in lines)}


def run_trl_end_to_end(steps: int, out: str) -> dict:
    started = time.perf_counter()
    result = run_trl(steps, out)  # model load, DPOTrainer (ref precompute), train()
    result["end_to_end_seconds"] = time.perf_counter() - started
    return result


def main(steps: int = 4) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        ours = run_worker(MODULE, "--side", "ours", "--steps", str(steps), "--out", tmp,
                          timeout=TIMEOUT)
        trl = run_worker(MODULE, "--side", "trl", "--steps", str(steps), "--out", tmp,
                         timeout=TIMEOUT)
    figures = {
        "end_to_end_seconds_ours": ours["end_to_end_seconds"],
        "end_to_end_seconds_trl": trl["end_to_end_seconds"],
        "end_to_end_ratio_ours_over_trl": ratio(ours["end_to_end_seconds"],
                                                trl["end_to_end_seconds"]),
        "steady_step_seconds_ours": steady(ours["step_seconds"]),
        "steady_step_seconds_trl": steady(trl["step_seconds"]),
        "step_time_ratio_ours_over_trl": ratio(steady(ours["step_seconds"]),
                                               steady(trl["step_seconds"])),
        "peak_rss_mib_ours_worker": ours["peak_rss_mib_worker"],
        "peak_rss_mib_ours_driver": ours["peak_rss_mib_driver"],
        "peak_rss_mib_trl": trl["peak_rss_mib"],
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"],
                                                             strict=False)),
    }
    sizes = {"model": MODEL, "pairs": NUM_PAIRS, "global_batch": GLOBAL_BATCH,
             "micro_batch": MICRO_BATCH, "steps": steps, "device": "cpu", "workers": 1,
             "cpus_per_worker": CORES,
             "ours_entry": "ref scorer + aipo_ray.training.trainer.train_policy (Ray Train)",
             "end_to_end_excludes": "Ray start-up (reported apart: ray_start_seconds)"}
    write_result("trainer_e2e", sizes, figures, raw={"ours": ours, "trl": trl})
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=("ours", "trl"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    apply_env()
    if args.side == "ours":
        emit(run_pipeline_trainer(args.steps, args.out))
    elif args.side == "trl":
        emit(run_trl_end_to_end(args.steps, args.out))
    else:
        print(json.dumps(main(), indent=2))
    sys.exit(0)
