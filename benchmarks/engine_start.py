"""A shared vLLM engine on CPU inside its Ray actor's process (`generation/inprocess_engine.py`)
against vLLM's AsyncLLM with its EngineCore and worker processes (what the shared engines used
before, and still use on GPUs).

Each side runs in a fresh process with its own local Ray: SmolLM2-135M-Instruct (the `make run`
model) answers 12 prompts greedily twice through `aipo_ray.generation.generate`. The first call
includes the engine's start (actor start, vLLM import, its processes, model load); the second
is warm, so the difference is the start-up. Both sides must give the same answers.

    python -m benchmarks.engine_start
"""

from __future__ import annotations

import sys
import time

from benchmarks.common import apply_env, emit, run_worker, write_result
from benchmarks.engine_reload import PROMPTS, answer

MODULE = "benchmarks.engine_start"
SIDES = ("in_process", "subprocesses")


def measure(side: str) -> dict:
    from aipo_ray.config import RayConfig
    from aipo_ray.generation import engines
    from aipo_ray.models import builtin_model_path
    from aipo_ray.runtime import init_ray

    engines.IN_PROCESS_ON_CPU = side == "in_process"
    model = builtin_model_path("builtin:smollm2-135m-instruct")
    init_ray(RayConfig(num_cpus=2, object_store_memory=400_000_000))
    first, first_seconds = answer(model)     # engine start + answers
    second, warm_seconds = answer(model)     # the held engine again
    start = time.perf_counter()
    engines.release_engines()
    return {"first_call_seconds": first_seconds, "warm_call_seconds": warm_seconds,
            "start_seconds": first_seconds - warm_seconds,
            "release_seconds": time.perf_counter() - start,
            "answers": first, "same_answers_twice": first == second}


def main() -> dict:
    apply_env()
    runs = {side: run_worker(MODULE, side, timeout=1800) for side in SIDES}
    ours, base = runs["in_process"], runs["subprocesses"]
    figures = {
        **{f"{side}_{k}": v for side, r in runs.items() for k, v in r.items() if k != "answers"},
        "start_ratio": ours["start_seconds"] / base["start_seconds"],
        "first_call_ratio": ours["first_call_seconds"] / base["first_call_seconds"],
        "warm_call_ratio": ours["warm_call_seconds"] / base["warm_call_seconds"],
        "same_answers": ours["answers"] == base["answers"],
    }
    print(f"[bench] engine start: in process {ours['start_seconds']:.1f}s, with subprocesses "
          f"{base['start_seconds']:.1f}s; warm call {ours['warm_call_seconds']:.1f}s vs "
          f"{base['warm_call_seconds']:.1f}s; same answers: {figures['same_answers']}", flush=True)
    sizes = {"model": "builtin:smollm2-135m-instruct", "prompts": len(PROMPTS), "max_tokens": 48,
             "greedy": True, "ray_cpus": 2, "cpus_per_replica": 1}
    write_result("engine_start", sizes, figures)
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 2:
        apply_env()
        emit(measure(sys.argv[1]))
    else:
        print(main())
