"""Scaling on paper: expected wall time of one AIPO paper iteration (20K pairs, N=5, 12B) on
8, 16 and 64 H100s, from measured figures of this run plus published/assumed GPU rates.

Nothing here is measured on a GPU. Every assumption is a named constant below and is copied
into the result file; the measured inputs are read from the other results files.
"""

from __future__ import annotations

import json

from benchmarks.common import RESULTS, write_result

GPU_COUNTS = (8, 16, 64)
PAPER = {"pairs": 20_000, "candidates": 5, "params": 12.2e9, "prompt_tokens": 256,
         "response_tokens": 512, "global_batch": 256}
ASSUMPTIONS = {
    # vLLM offline throughput of a 12B dense model in bf16 on one H100 (TP=1, large batch):
    # vLLM's published throughput benchmarks put 8B Llama at ~4-5K output tok/s per H100;
    # scaled by parameters, ~2.5K tok/s for 12B.
    "vllm_output_tokens_per_s_per_h100": 2500.0,
    "h100_bf16_dense_peak_flops": 989e12,
    # The MFU target for the FSDP2 trainer; not measured here (no GPU in this session).
    "training_mfu": 0.40,
    "training_mfu_64_gpus": 0.35,  # cross-node all-gathers over 8 nodes cost a few points
    "reference_forward_mfu": 0.40,
    # PairRM (DeBERTa-v3-large, 0.4B): one ordered comparison is a ~1.3K-token encoder pass.
    "pairrm_comparisons_per_s_per_h100": 150.0,
    "engine_start_seconds": 90.0,  # vLLM engine + 24 GB of weights per replica
    "train_start_seconds": 120.0,  # Ray Train worker group, weights load, FSDP2 wrap
    "checkpoint_bytes": 2 * 12.2e9,  # bf16 safetensors
    "storage_gbytes_per_s": 1.0,  # object-store upload per node, and download at load
}


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def measured_inputs() -> dict:
    """Figures of this run that carry over to the paper scale (with a fallback if absent)."""
    ranking = _load("ranking").get("figures", {})
    generation = _load("generation_cpu").get("figures", {})
    split = _load("iteration_split").get("figures", {})
    raw = split.get("raw", {})
    return {
        # Ordered comparisons per prompt: tournament vs full matrix at N=5.
        "tournament_comparisons_per_prompt": ranking.get("ordered_comparisons_per_prompt_tournament", 12.0),
        "full_comparisons_per_prompt": ranking.get("ordered_comparisons_per_prompt_full", 20.0),
        # Our Ray Data vLLM path relative to plain vLLM, at the marginal (steady-state) rate:
        # engine start is its own term below, so the end-to-end ratio of a tiny run, which is
        # mostly start-up, would count it twice. Capped at 1: no free speed-up.
        "vllm_backend_efficiency": min(1.0, generation.get("vllm_backend_over_plain_vllm_marginal")
                                       or generation.get("vllm_backend_over_plain_vllm") or 1.0),
        "ray_start_seconds": raw.get("ray_start_seconds", 5.0),
        "driver_seconds_between_stages": split.get("share_driver_between_stages", 0.0)
        * split.get("wall_seconds", 0.0),
    }


def iteration_seconds(gpus: int, m: dict, tournament: bool = True) -> dict[str, float]:
    """Per-stage seconds of one paper iteration on `gpus` H100s (each stage data-parallel)."""
    a, p = ASSUMPTIONS, PAPER
    out_tokens = p["pairs"] * p["candidates"] * p["response_tokens"]
    gen_rate = a["vllm_output_tokens_per_s_per_h100"] * gpus * m["vllm_backend_efficiency"]
    per_prompt = m["tournament_comparisons_per_prompt" if tournament else "full_comparisons_per_prompt"]
    pair_tokens = 2 * p["pairs"] * (p["prompt_tokens"] + p["response_tokens"])
    mfu = a["training_mfu_64_gpus"] if gpus >= 64 else a["training_mfu"]
    flops = a["h100_bf16_dense_peak_flops"] * gpus
    io = a["checkpoint_bytes"] / (a["storage_gbytes_per_s"] * 1e9)
    return {
        "ray_start": m["ray_start_seconds"],
        "generate": a["engine_start_seconds"] + io + out_tokens / gen_rate,
        "rank": p["pairs"] * per_prompt / (a["pairrm_comparisons_per_s_per_h100"] * gpus),
        "ref_logps": io + 2 * p["params"] * pair_tokens / (flops * a["reference_forward_mfu"]),
        "train": a["train_start_seconds"] + io + 6 * p["params"] * pair_tokens / (flops * mfu),
        "commit": io,
        "driver": m["driver_seconds_between_stages"],
    }


def main() -> dict:
    m = measured_inputs()
    table = {}
    for gpus in GPU_COUNTS:
        stages = iteration_seconds(gpus, m)
        table[str(gpus)] = {"stages_seconds": stages, "total_hours": sum(stages.values()) / 3600,
                            "total_hours_full_matrix_ranking":
                                sum(iteration_seconds(gpus, m, tournament=False).values()) / 3600}
    figures = {"by_gpus": table, "measured_inputs": m}
    write_result("scaling_paper", dict(PAPER), figures, assumptions=ASSUMPTIONS)
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
