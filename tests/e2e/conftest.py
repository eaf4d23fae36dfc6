"""A tiny but complete iterative run: tiny random Llama, fixed prompts, hf generation, the policy
as LLM judge, one FSDP2 worker. Fast enough for the default suite, real in every stage."""

import json
from pathlib import Path

import pytest
import yaml

PROMPTS = [
    "Name a fruit.", "What is two plus two?", "Say hello.", "Give me a colour.",
    "Name an animal.", "What day comes after Monday?",
]


def tiny_run_config(model_dir: str, run_dir: str, prompts_file: Path, iterations: int = 2) -> dict:
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {
        "name": "e2e", "run_dir": run_dir, "iterations": iterations, "seed": 0,
        "model": {"path": model_dir},
        "prompts": {"sources": [{"path": str(prompts_file)}]},
        "self_instruct": {"enabled": False},
        "generation": {"backend": "hf", "num_candidates": 3, "max_tokens": 12,
                       "temperature": 1.0, "batch_size": 6},
        "ranking": {"backend": "llm_judge", "model": "policy", "batch_size": 6},
        "pairs": {"drop_truncated": False},
        "training": {"num_workers": 1, "global_batch_size": 4, "micro_batch_size": 2,
                     "learning_rate": 1e-3, "max_prompt_length": 64, "max_response_length": 32},
        "loss": {"name": "aipo"},
        "ray": {"num_cpus": 2, "object_store_memory": 268435456},
    }


@pytest.fixture
def write_config(tmp_path):
    def write(data: dict) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write
