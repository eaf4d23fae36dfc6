"""Sweeps: variants are ordinary runs under one root, equal stages are computed once, a failed
variant stops nobody, and per-iteration overrides reach the fingerprints."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aipo_ray.config import ConfigError, load_config
from aipo_ray.pipeline import Stage, StageResult
from aipo_ray.storage import RunDir
from aipo_ray.sweeps import expand_variants, load_sweep, run_sweep

from .chain import chain


def write_sweep(tmp_path, model_dir: str, body: str):
    (tmp_path / "base.yaml").write_text(
        f"model: {{path: {model_dir}}}\niterations: 2\nray: {{num_cpus: 2}}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\n" + body)
    return path


def test_grid_and_explicit_variants_cross_with_readable_names(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("base: b.yaml\nvariants: {dpo: [loss.name=dpo], aipo: [loss.name=aipo]}\n"
                    "grid: {loss.beta: [0.05, 0.1]}\n")
    variants = expand_variants(load_sweep(path))
    assert [v.name for v in variants] == ["dpo_beta-0.05", "dpo_beta-0.1", "aipo_beta-0.05",
                                          "aipo_beta-0.1"]
    assert variants[1].overrides == ("loss.name=dpo", "loss.beta=0.1")


@pytest.mark.parametrize("concurrent", [1, 2])
def test_variants_share_equal_stages_and_resume(tmp_path, tiny_llama_path, ray_cluster,
                                                concurrent):
    sweep = write_sweep(tmp_path, tiny_llama_path,
                        "grid: {training.learning_rate: [1.0e-6, 2.0e-6]}\n"
                        f"max_concurrent: {concurrent}\n")
    root = str(tmp_path / "out")
    runs = Counter()
    results = run_sweep(sweep, root=root, stages=chain(runs, tiny_llama_path))
    assert [(r.name, r.status) for r in results] == [("learning_rate-1e-06", "finished"),
                                                    ("learning_rate-2e-06", "finished")]
    # The data half of iteration 1 and the fixed prompt pool of iteration 2 are computed once;
    # training differs, so θ_1 differs and iteration 2's generations are each variant's own.
    assert runs == Counter({(1, "prompts"): 1, (1, "generations"): 1, (1, "train"): 2,
                            (1, "commit"): 2, (2, "prompts"): 1, (2, "generations"): 2,
                            (2, "train"): 2, (2, "commit"): 2})
    first, second = (RunDir(r.run_dir) for r in results)
    if second.stage_success(1, "generations").get("reused_from") is None:
        first, second = second, first  # run side by side, either variant may compute it
    reused = second.stage_success(1, "generations")
    assert reused["reused_from"] == first.uri_of("iter_001", "generations")
    assert second.read_stage_table(1, "generations") == first.read_stage_table(1, "generations")
    assert second.stage_success(1, "train").get("reused_from") is None
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["failed"] == []

    again = Counter()
    run_sweep(sweep, root=root, stages=chain(again, tiny_llama_path))
    assert again == Counter()


class FailsForSeed13(Stage):
    name = "boom"
    config_keys = ("seed",)

    def run(self, ctx):
        if ctx.config.seed == 13:
            raise RuntimeError("this variant is broken")
        return StageResult(rows_in=0, rows_out=0)


def test_a_failed_variant_does_not_stop_the_others(tmp_path, tiny_llama_path, ray_cluster):
    sweep = write_sweep(tmp_path, tiny_llama_path, "grid: {seed: [13, 1]}\n")
    runs = Counter()
    base = chain(runs, tiny_llama_path)
    results = run_sweep(sweep, root=str(tmp_path / "out"),
                        stages=lambda config, it: [FailsForSeed13(), *base(config, it)])
    by_name = {r.name: r for r in results}
    assert by_name["seed-13"].status == "failed"
    assert "this variant is broken" in by_name["seed-13"].error
    assert by_name["seed-1"].status == "finished" and by_name["seed-1"].latest_model == "iter_002"
    summary = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert summary["failed"] == ["seed-13"]


def test_iteration_overrides_change_only_the_iterations_they_name(tmp_path, tiny_llama_path,
                                                                 ray_cluster):
    sweep = write_sweep(tmp_path, tiny_llama_path,
                        "variants:\n  fixed: []\n  decayed: ['iteration_overrides={2: "
                        "[training.learning_rate=1.0e-7]}']\n")
    runs = Counter()
    run_sweep(sweep, root=str(tmp_path / "out"), stages=chain(runs, tiny_llama_path))
    # Iteration 1 is the same in both variants (even its commit's model); iteration 2's train
    # sees the override, the rest of iteration 2 is shared.
    assert runs[(1, "train")] == 1 and runs[(2, "generations")] == 1
    assert runs[(2, "train")] == 2
    decayed = RunDir(str(tmp_path / "out" / "decayed"))
    assert decayed.stage_success(2, "train")["identity"]["config"]["training"][
        "learning_rate"] == 1e-7


def test_an_invalid_iteration_override_fails_before_anything_runs():
    with pytest.raises(ConfigError, match="iteration_overrides up to iteration 2"):
        load_config(None, ["model.path=x", "iteration_overrides={2: [training.learning_rate=-1]}"])
