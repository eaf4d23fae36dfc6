"""A run directory whose models are real: θ_0 a pointer to a tiny Llama, θ_1 and θ_2 committed
tiny Llamas (different seeds) with manifest and `_COMMITTED`, as the trainer leaves them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.models import POINTER
from aipo_ray.storage import RunDir, make_prompt_id, write_success
from aipo_ray.storage.checkpoint import commit_checkpoint

PROMPTS = [
    "Name three primary colors.", "What is the capital of France?", "Explain what a noun is.",
    "Give a synonym for happy.", "Count from one to five.", "Describe the color of the sky.",
    "What do bees make?", "Say hello in Spanish.",
]
TRAINED = PROMPTS[:3]  # these have pairs in iter_001, so they are not held out


def build_model_run(root: Path, base_model: str, tokenizer_dir: str, **config) -> RunDir:
    """Base pointer + committed iter_001 and iter_002; seed prompts in a JSONL file."""
    from tests.fixtures.models import build_tiny_llama

    prompt_file = root / "seed.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    data = {
        "name": "model-run", "run_dir": str(root / "run"), "iterations": 2,
        "model": {"path": base_model},
        "prompts": {"sources": [{"path": str(prompt_file)}]},
        "self_instruct": {"enabled": False},
        "generation": {"backend": "hf", "max_tokens": 16, "batch_size": 4},
        "ranking": {"backend": "callable", "callable": "tests.report.judges:longer_is_better"},
        "eval": {"num_prompts": 4, "max_tokens": 6, "bootstrap_samples": 100},
        "ray": {"num_cpus": 2, "object_store_memory": 200 * 1024 * 1024},
    }
    for key, value in config.items():  # section overrides merge into the sections above
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    cfg = RunConfig.model_validate(data)
    rd = RunDir(cfg.resolved_run_dir, cfg.storage)
    rd.write_json("run.json", {"config": cfg.to_public_dict()})
    rd.write_json(f"models/iter_000/{POINTER}", {"path": base_model})
    for it in (1, 2):
        staged = build_tiny_llama(root / f"staged-{it}", tokenizer_dir, seed=it)
        commit_checkpoint(staged, rd, it)
    pairs = pa.table({"prompt_id": [make_prompt_id(p) for p in TRAINED], "prompt": TRAINED,
                      "chosen": ["a"] * 3, "rejected": ["b"] * 3, "chosen_score": [1.0] * 3,
                      "rejected_score": [0.0] * 3})
    rd.write_stage_table(1, "pairs", pairs)
    write_success(rd.fs, rd.stage_path(1, "pairs"), {"rows_in": 3, "rows_out": 3, "seconds": 0.1})
    return rd
