"""What each registered ranker costs per prompt: comparisons or requests, and prompts/s.

Every ranker is built with `build_ranker(cfg, policy_path)` as the rank stage builds it and asked
`best_worst(prompts, candidates)` for the same prompts and candidates, in this process, on the
CPU, without Ray. Per ranker: `Ranking.comparisons` per prompt (model evaluations of ordered
pairs, or requests / generations for judges that write their verdict; 0 for rankers that score
each candidate directly), sequences the model reads per prompt, and prompts/s: the median (and
the best) of REPEATS rounds in which every ranker ranks all prompts in turn, after one warm-up
call each.

The models are tiny and random, built offline:

- PairRM: `aipo_ray.ranking.tiny.build_tiny_pairrm` (DeBERTa-v2, hidden 32, 2 layers, PairRM's
  1224/412 token limits);
- LLM judge and reward model: a Llama with hidden 64, 2 layers and SmolLM2's tokenizer and chat
  template (`tests/fixtures/models.py`, `tests/ranking/test_reward_model.py`; most of their
  parameters are the 49k-token embeddings);
- http_judge: the scripted OpenAI-compatible server of `tests/ranking/test_http_judge.py` on
  127.0.0.1, which answers at once: its figure is the client's own overhead (HTTP, threads,
  prompt building, parsing), not a judge's speed. That server speaks HTTP/1.0 (a connection
  per request) and `socketserver`'s listen backlog of 5 drops connections when 8 arrive at once
  (a one-second SYN retry); here the backlog is raised so the figure is the client's, not that;
- callable: a Python function scoring by length.

Tiny random models measure per-call overhead and relative cost (how many sequences, how long,
generated or not), not the speed of real-size models; see benchmarks/pairrm_real_size.py and
benchmarks/reward_model.py for real sizes. The random judge writes no readable "Score: X", so
`llm_judge` with `self_rewarding` rejects every prompt: its cost is still N generations of
`judge_max_tokens` tokens each.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from benchmarks.common import apply_env, write_result

NUM_PROMPTS, NUM_CANDIDATES, REPEATS = 8, 4, 5
SELF_REWARDING_MAX_TOKENS = 16
PAIR_BATCH_SIZE = 16


def by_length(prompt: str, candidates: list[str]) -> list[float]:
    """The `callable` ranker's function: longer is better."""
    return [float(len(c)) for c in candidates]


def make_inputs(seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Short prompts and candidates; each candidate says what it is 'worth' (for the scripted
    HTTP judge, which grades by that number)."""
    from aipo_ray.ranking.tiny import synthetic_lines

    rng = random.Random(seed)
    lines = synthetic_lines(n=500, seed=seed + 17)
    prompts = [" ".join(rng.sample(lines, rng.randint(1, 2))) for _ in range(NUM_PROMPTS)]
    candidates = [[f"worth {rng.randint(0, 5)}: " + " ".join(rng.sample(lines, rng.randint(1, 3)))
                   for _ in range(NUM_CANDIDATES)] for _ in range(NUM_PROMPTS)]
    return prompts, candidates


def parameters(path: str) -> int:
    """Parameters in a checkpoint directory's safetensors files."""
    from safetensors import safe_open

    total = 0
    for file in Path(path).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(f.get_slice(key).get_shape())
    return total


def time_rankers(rankers: dict, prompts, candidates) -> dict[str, dict]:
    """One warm-up call each, then REPEATS rounds in which every ranker ranks all prompts once,
    in turn: on a shared machine the load changes from second to second, and interleaving
    exposes every ranker to the same load. Median and best seconds per ranker."""
    last = {name: ranker.best_worst(prompts, candidates) for name, ranker in rankers.items()}
    seconds: dict[str, list[float]] = {name: [] for name in rankers}
    for _ in range(REPEATS):
        for name, ranker in rankers.items():
            start = time.perf_counter()
            last[name] = ranker.best_worst(prompts, candidates)
            seconds[name].append(time.perf_counter() - start)
    out = {}
    for name, ranking in last.items():
        median = statistics.median(seconds[name])
        out[name] = {"comparisons_per_prompt": float(ranking.comparisons.mean()),
                     "prompts_per_s": len(prompts) / median,
                     "prompts_per_s_best": len(prompts) / min(seconds[name]),
                     "median_seconds": median, "seconds": seconds[name],
                     "rejected_prompts": sum(r is not None for r in (ranking.rejections or []))}
    return out


def main() -> dict:
    import torch

    from aipo_ray.config import RankingConfig
    from aipo_ray.models import builtin_model_path
    from aipo_ray.ranking import build_ranker
    from aipo_ray.ranking.tiny import build_tiny_pairrm
    from tests.fixtures.models import build_tiny_llama
    from tests.ranking.test_http_judge import scripted_judge
    from tests.ranking.test_reward_model import build_reward_model

    apply_env()

    # socketserver listens with a backlog of 5: 8 concurrent connects stall a second each
    backlog, ThreadingHTTPServer.request_queue_size = ThreadingHTTPServer.request_queue_size, 128

    prompts, candidates = make_inputs()
    n = NUM_CANDIDATES
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rankers-") as tmp, scripted_judge() as server:
        tokenizer_dir = builtin_model_path("builtin:smollm2-135m-instruct")
        pairrm = build_tiny_pairrm(f"{tmp}/pairrm")["hf"]
        llama = build_tiny_llama(Path(tmp) / "llama", tokenizer_dir)
        rm = build_reward_model(Path(tmp) / "rm", tokenizer_dir, "llama")
        params = {"pairrm": parameters(pairrm), "llama": parameters(llama), "rm": parameters(rm)}
        http = {"url": server.url, "model": "judge"}
        # name -> (config, sequences the model reads per prompt, model, what it is)
        rankers = {
            "pairrm_full": (dict(backend="pairrm", model=pairrm, mode="full"),
                            n * (n - 1), "pairrm", "N(N−1) ordered comparisons"),
            "pairrm_tournament": (dict(backend="pairrm", model=pairrm, mode="tournament"),
                                  None, "pairrm", "knockouts for best and worst, both orders"),
            "llm_judge_ab_tournament": (
                dict(backend="llm_judge", model="policy", mode="tournament"), None, "llama",
                "A/B next-token logits, both orders, one forward each"),
            "llm_judge_self_rewarding": (
                dict(backend="llm_judge", model="policy", judge_prompt="self_rewarding",
                     judge_max_tokens=SELF_REWARDING_MAX_TOKENS), n, "llama",
                f"one greedy generation of {SELF_REWARDING_MAX_TOKENS} tokens per candidate"),
            "reward_model": (dict(backend="reward_model", model=rm), n, "rm",
                             "one forward per candidate"),
            "http_judge_pointwise": (dict(backend="http_judge", judge_prompt="self_rewarding", **http),
                                     n, None, "one request per candidate"),
            "http_judge_pairwise_full": (dict(backend="http_judge", mode="full", **http),
                                         n * (n - 1), None, "one request per ordered pair"),
            "http_judge_pairwise_tournament": (dict(backend="http_judge", mode="tournament", **http),
                                               None, None, "requests of the knockouts, both orders"),
            "callable": (dict(backend="callable", callable="benchmarks.ranker_costs:by_length"), 0, None,
                         "one Python call per prompt"),
        }
        built = {name: build_ranker(RankingConfig(pair_batch_size=PAIR_BATCH_SIZE, **spec[0]),
                                    policy_model_path=llama)
                 for name, spec in rankers.items()}
        timed = time_rankers(built, prompts, candidates)
        requests_seen = len(server.requests) / ((REPEATS + 1) * len(prompts))
    ThreadingHTTPServer.request_queue_size = backlog  # as it was, for the next benchmark
    for name, (_, sequences, model, what) in rankers.items():
        result = timed[name]
        if sequences is None:  # pairwise tournaments: one sequence per ordered comparison
            sequences = result["comparisons_per_prompt"]
        figures[name] = {**result, "sequences_per_prompt": sequences, "work": what,
                         "model_parameters": params.get(model) if model else None}
        print(f"[bench] {name}: {result['comparisons_per_prompt']:.1f} comparisons/prompt, "
              f"{result['prompts_per_s']:.2f} prompts/s (best {result['prompts_per_s_best']:.2f})",
              flush=True)
    http = [f["comparisons_per_prompt"] for name, f in figures.items() if name.startswith("http")]
    # what the server saw, all http_judge rankers together, against what they reported
    checks = {"http_requests_per_prompt_seen_by_server": requests_seen,
              "http_requests_per_prompt_reported": sum(http)}
    sizes = {"prompts": NUM_PROMPTS, "candidates_per_prompt": NUM_CANDIDATES,
             "repeats": REPEATS, "statistic": "median (and best) of the interleaved rounds, after one warm-up call each",
             "pair_batch_size": PAIR_BATCH_SIZE, "device": "cpu", "ray": False,
             "torch_threads": torch.get_num_threads(),
             "self_rewarding_judge_max_tokens": SELF_REWARDING_MAX_TOKENS,
             "models": {
                 "pairrm": f"tiny random DeBERTa-v2 PairRM (hidden 32, 2 layers, limits 1224/412), "
                           f"{params['pairrm']:,} parameters",
                 "llm_judge": f"tiny random Llama (hidden 64, 2 layers, SmolLM2 tokenizer), "
                              f"{params['llama']:,} parameters, judging as 'policy'",
                 "reward_model": f"tiny random LlamaForSequenceClassification (hidden 64, 2 layers, "
                                 f"SmolLM2 tokenizer), {params['rm']:,} parameters",
                 "http_judge": "scripted local server on 127.0.0.1 answering at once: "
                               "client overhead only",
                 "callable": "Python function, score = length"},
             "caveat": "tiny random models: per-call overhead and relative cost, not real-size speed"}
    write_result("ranker_costs", sizes, figures, checks=checks)
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=float))
