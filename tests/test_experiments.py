"""The shipped experiments (pipelines/experiments/, pipelines/sweeps/): every variant of every
sweep file validates, and each file is the experiment its name promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipo_ray.sweeps import variant_configs

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted([*(REPO / "pipelines" / "experiments").glob("*.yaml"),
                 *(REPO / "pipelines" / "sweeps").glob("*.yaml")])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_variant_of_a_shipped_sweep_validates(path):
    configs = variant_configs(path, root="runs/check")
    assert len(configs) >= 2
    assert all(c.run_dir == f"runs/check/{name}" for name, c in configs.items())


def _configs(name: str):
    return variant_configs(REPO / "pipelines" / "experiments" / name)


def test_objectives_tiny_compares_the_papers_five_objectives_for_three_iterations():
    configs = _configs("objectives_tiny.yaml")
    assert {n: c.loss.name for n, c in configs.items()} == {
        "dpo": "dpo", "dpo_nll": "dpo_nll", "alpha_dpo": "alpha_dpo", "aipo": "aipo",
        "simpo": "simpo"}
    for c in configs.values():
        assert c.iterations == 3 and c.model.path == "builtin:smollm2-135m-instruct"
        assert not c.training.use_gpu and c.ray.num_cpus == 2


def test_aipo_hparams_is_table_6s_grid():
    configs = _configs("aipo_hparams.yaml")
    grid = {(c.loss.name, c.loss.hparams["alpha"], c.loss.hparams["nll_weight"])
            for c in configs.values()}
    assert grid == {("aipo", a, lam) for a in (0.03, 0.05, 0.07) for lam in (0.2, 0.5)}


def test_objectives_on_mistral_nemo_differ_only_in_the_loss():
    configs = _configs("objectives_mistral_nemo.yaml")
    assert sorted(c.loss.name for c in configs.values()) == sorted(
        ["dpo", "dpo_nll", "alpha_dpo", "aipo", "simpo"])
    rest = {c.model_dump_json(exclude={"loss", "run_dir", "name"}) for c in configs.values()}
    assert len(rest) == 1


def test_rankers_length_runs_one_aipo_pipeline_under_pairrm_and_an_llm_judge():
    configs = _configs("rankers_length.yaml")
    assert {c.ranking.backend for c in configs.values()} == {"pairrm", "llm_judge"}
    assert len({c.loss.model_dump_json() for c in configs.values()}) == 1
    assert {c.loss.name for c in configs.values()} == {"aipo"}


def test_the_papers_config_keeps_truncated_candidates():
    # The paper picks best and worst among all N candidates; it never drops cut ones first.
    for c in _configs("objectives_mistral_nemo.yaml").values():
        assert c.pairs.drop_truncated is False
        assert c.eval.max_tokens is None  # judged with the generation budget (2048)
