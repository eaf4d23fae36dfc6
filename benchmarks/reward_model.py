"""Reward-model ranking: RewardModelRanker vs the plain transformers loop of a model card.

The reward model is SmolLM2-135M-Instruct's real weights (the builtin offline model) as a
`LlamaForSequenceClassification` with a seeded random one-output score head: a 135M decoder
with a real tokenizer and chat template, the shape of Skywork-Reward-V2's smallest models (0.6B)
at a size a 2-core CPU runs in seconds. Its pad token is its EOS, the case where transformers'
own head needs care (see aipo_ray/ranking/reward_model.py).

The baseline is the Skywork-Reward-V2 card's loop, one conversation per forward:

    ids = tokenizer.apply_chat_template(conv, tokenize=True, return_tensors="pt")
    score = model(ids).logits[0][0].item()

Ours tokenises the same conversations, sorts them by length and scores `pair_batch_size` of
them per forward. Both run in this process on the same model object, interleaved, best round
kept. Agreement: max |score difference| over every conversation.
"""

from __future__ import annotations

import json
import random
import tempfile

from benchmarks.common import apply_env, ratio, write_result
from benchmarks.ranking import interleaved_best

NUM_PROMPTS, NUM_CANDIDATES, BATCH, ROUNDS = 12, 4, 16, 3


def make_inputs(seed: int = 0) -> tuple[list[str], list[list[str]]]:
    from aipo_ray.ranking.tiny import synthetic_lines

    rng = random.Random(seed)
    lines = synthetic_lines(n=1000, seed=seed + 11)
    prompts = [" ".join(rng.sample(lines, rng.randint(1, 3))) for _ in range(NUM_PROMPTS)]
    candidates = [[" ".join(rng.sample(lines, rng.randint(1, 6))) for _ in range(NUM_CANDIDATES)]
                  for _ in range(NUM_PROMPTS)]
    return prompts, candidates


def build_reward_model(target: str) -> str:
    """SmolLM2-135M-Instruct with a seeded random scalar head, saved as a seq-cls checkpoint."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aipo_ray.models import builtin_model_path

    source = builtin_model_path("builtin:smollm2-135m-instruct")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    torch.nn.init.normal_(model.score.weight, std=0.05)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def main() -> dict:
    import numpy as np
    import torch

    from aipo_ray.ranking import RewardModelRanker

    apply_env()
    prompts, candidates = make_inputs()
    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        path = build_reward_model(f"{tmp}/rm")
        ranker = RewardModelRanker.from_pretrained(path, batch_size=BATCH)
    model, tokenizer = ranker.model, ranker.tokenizer
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                     for p, cands in zip(prompts, candidates, strict=True) for c in cands]

    @torch.no_grad()
    def plain_loop() -> np.ndarray:
        out = []
        for conv in conversations:
            ids = tokenizer.apply_chat_template(conv, tokenize=True, return_tensors="pt",
                                                return_dict=True)
            out.append(model(**ids).logits[0][0].item())
        return np.array(out).reshape(len(prompts), -1)

    seconds, results = interleaved_best(
        {"ours": lambda: ranker.score(prompts, candidates), "plain_transformers": plain_loop}, ROUNDS)
    diff = float(np.abs(results["ours"] - results["plain_transformers"]).max())
    lengths = [len(ranker.encode(c[0]["content"], c[1]["content"])) for c in conversations]
    n = len(conversations)
    figures = {
        "conversations_per_s_ours": n / seconds["ours"],
        "conversations_per_s_plain_transformers": n / seconds["plain_transformers"],
        "prompts_per_s_ours": len(prompts) / seconds["ours"],
        "prompts_per_s_plain_transformers": len(prompts) / seconds["plain_transformers"],
        "speedup_vs_plain_transformers": ratio(seconds["plain_transformers"], seconds["ours"]),
        "max_abs_score_diff": diff,
        "same_best_worst": bool((results["ours"].argmax(-1) == results["plain_transformers"].argmax(-1)).all()
                                and (results["ours"].argmin(-1)
                                     == results["plain_transformers"].argmin(-1)).all()),
        "score_spread": float(results["plain_transformers"].std()),
        "best_seconds": seconds,
    }
    sizes = {"model": "SmolLM2-135M-Instruct + random scalar head (LlamaForSequenceClassification), "
                      "pad = EOS, fp32",
             "prompts": len(prompts), "candidates_per_prompt": NUM_CANDIDATES, "conversations": n,
             "tokens_per_conversation_min_mean_max": [min(lengths), float(np.mean(lengths)), max(lengths)],
             "our_batch_size": BATCH, "rounds": ROUNDS, "device": "cpu",
             "torch_threads": torch.get_num_threads()}
    write_result("reward_model", sizes, figures)
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=float))
