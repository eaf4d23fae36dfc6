"""Plug-in registries: rankers and generation backends are found by name, checked at config
validation, and a user's module adds one with a decorator."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from aipo_ray.config import GenerationConfig, RankingConfig
from aipo_ray.generation import available_generators, get_generator
from aipo_ray.ranking import ScoringRanker, available_rankers, build_ranker, register_ranker
from aipo_ray.registry import Registry


def test_builtin_rankers_and_generators_are_registered():
    assert {"pairrm", "llm_judge", "callable"} <= set(available_rankers())
    assert {"hf", "vllm"} <= set(available_generators())
    from aipo_ray.generation.hf import generate_hf

    assert get_generator("hf") is generate_hf


def test_unknown_names_fail_validation_naming_the_known_ones():
    with pytest.raises(ValidationError, match=r"unknown ranking backend 'nope'.*pairrm"):
        RankingConfig(backend="nope")
    with pytest.raises(ValidationError, match=r"unknown generation backend 'nope'.*hf"):
        GenerationConfig(backend="nope")
    assert GenerationConfig(backend="auto").backend == "auto"


def test_a_backend_check_runs_at_validation():
    with pytest.raises(ValidationError, match=r"ranking\.callable"):
        RankingConfig(backend="callable")


class _Longest(ScoringRanker):
    def __init__(self, bonus: float):
        self.bonus = bonus

    def score(self, prompts, candidates):
        return np.array([[len(c) + self.bonus for c in cands] for cands in candidates], dtype=float)


def _needs_bonus(cfg: RankingConfig) -> None:
    if "bonus" not in cfg.options:
        raise ValueError("ranking.options.bonus is required by the 'longest' ranker")


@register_ranker("test_longest", check=_needs_bonus)
def _build_longest(cfg, ctx):
    return _Longest(float(cfg.options["bonus"]))


def test_a_user_ranker_in_one_module_is_built_from_config():
    with pytest.raises(ValidationError, match=r"options\.bonus"):
        RankingConfig(backend="test_longest")
    ranker = build_ranker(RankingConfig(backend="test_longest", options={"bonus": 1}))
    ranking = ranker.best_worst(["p"], [["a", "abc", "ab"]])
    assert ranking.scores.tolist() == [[2.0, 4.0, 3.0]]
    assert (ranking.best_idx[0], ranking.worst_idx[0]) == (1, 0)


def test_registering_a_name_twice_is_refused():
    registry: Registry[object] = Registry("widget")
    registry.register("a")(int)
    registry.register("a")(int)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a")(float)


def test_a_user_ranker_runs_in_the_ray_data_actor_pool(ray_cluster):
    """The actors import the builder's module (it travels pickled by reference), so a ranker
    registered outside aipo_ray validates and builds there too."""
    import ray.data

    from aipo_ray.ranking import rank_pool

    cfg = RankingConfig(backend="test_longest", options={"bonus": 0})
    ds = ray.data.from_items([{"prompt_id": "p", "prompt": "q", "candidates": ["bb", "a", "ccc"]}])
    row = rank_pool(ds, cfg).take_all()[0]
    assert (row["best_idx"], row["worst_idx"]) == (2, 1)
