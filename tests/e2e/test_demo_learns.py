"""The main job's training settings move the model: after one short iteration of
pipelines/configs/tiny_cpu.yaml (its model, loss, learning rate, batch sizes), SmolLM2's greedy
answers differ from θ_0's on most held-out prompts (issue 16: a demo whose answers never change
tells a newcomer nothing)."""

from __future__ import annotations

import pytest

from aipo_ray.config import load_config
from aipo_ray.pipeline.driver import run
from aipo_ray.report.evaluate import default_generate, heldout_prompts, load_run_config
from aipo_ray.storage import RunDir

REPO_CONFIG = "pipelines/configs/tiny_cpu.yaml"


@pytest.mark.slow  # about 3 minutes: SmolLM2 generation, reference pass and training on 2 cores
def test_one_iteration_of_the_tiny_cpu_config_changes_the_greedy_answers(tmp_path, ray_cluster):
    config = load_config(REPO_CONFIG, [
        f"run_dir={tmp_path / 'run'}", "iterations=1",
        # The short part: fixed seed prompts instead of self-instruct, the hf backend (no engine
        # start-up), a cheap ranker. Training is exactly tiny_cpu's.
        "self_instruct.enabled=false", "prompts.per_iteration=12", "generation.backend=hf",
        "generation.num_candidates=2", "generation.max_tokens=32",
        "ranking.backend=callable", "ranking.callable=tests.report.judges:longer_is_better",
        "eval.num_prompts=6", "eval.max_tokens=32",
    ])
    assert run(config).latest_model == "iter_001"

    rd = RunDir(config.resolved_run_dir)
    eval_config = load_run_config(rd, [])
    prompts, _ = heldout_prompts(eval_config, rd)
    generate = default_generate(eval_config)
    before = generate(prompts, rd.model_uri(0)).set_index("prompt_id")["response"]
    after = generate(prompts, rd.model_uri(1)).set_index("prompt_id")["response"]
    changed = sum(before[i] != after[i] for i in before.index)
    assert changed >= len(before) // 2 + 1, list(zip(before, after, strict=True))
