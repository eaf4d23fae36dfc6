"""64 deterministic preference pairs for the training benchmark (the packaged seed prompts)."""

from __future__ import annotations

import json
import random
from importlib import resources

_CLAUSES = [
    "the main idea is simple", "it depends on a few factors", "here is a short example",
    "first look at the inputs", "then compare the two options", "the result follows directly",
    "this is a common mistake", "a careful check avoids it", "in practice this works well",
    "the numbers support this", "keep the explanation short", "that answers the question",
]
_NOISE = ["maybe", "whatever", "not sure", "I guess", "dunno", "something like that", "ok"]


def seed_prompts() -> list[str]:
    text = resources.files("aipo_ray").joinpath("assets/seed_prompts.jsonl").read_text()
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def make_pairs(num_pairs: int = 64, seed: int = 0) -> dict[str, list]:
    """Columns prompt_id, prompt, chosen (3-6 clauses), rejected (1-4 noise words).

    Lengths vary from pair to pair so that padding is as real as in a pipeline run.
    """
    from aipo_ray.storage import make_prompt_id

    rng = random.Random(seed)
    prompts = seed_prompts()[:num_pairs]
    if len(prompts) < num_pairs:
        raise ValueError(f"only {len(prompts)} seed prompts; asked for {num_pairs} pairs")
    chosen = [", ".join(rng.sample(_CLAUSES, rng.randint(3, 6))).capitalize() + "." for _ in prompts]
    rejected = [" ".join(rng.choices(_NOISE, k=rng.randint(1, 4))).capitalize() + "." for _ in prompts]
    return {"prompt_id": [make_prompt_id(p) for p in prompts], "prompt": prompts,
            "chosen": chosen, "rejected": rejected,
            "chosen_score": [1.0] * num_pairs, "rejected_score": [0.0] * num_pairs}
