"""The pieces every backend shares: sampling resolution, seeds, EOS accounting, the N-candidate check."""

import pyarrow as pa
import pytest

from aipo_ray.config import GenerationConfig
from aipo_ray.generation import GenerationError, Sampling, candidate_seed, check_candidates
from aipo_ray.generation.base import count_until_eos, eos_token_ids
from aipo_ray.pipeline.stages.generate import flag_counts


def candidates(pairs):
    return pa.table({"prompt_id": [p for p, _ in pairs],
                     "candidate_idx": pa.array([i for _, i in pairs], pa.int32())})


def test_sampling_takes_overrides_and_falls_back_to_config():
    cfg = GenerationConfig(num_candidates=5, max_tokens=64, temperature=0.7, top_p=0.9, seed=3)
    assert Sampling.resolve(cfg) == Sampling(n=5, max_tokens=64, temperature=0.7, top_p=0.9, seed=3)
    # Self-instruct asks for one candidate with its own values; temperature 0 means greedy.
    s = Sampling.resolve(cfg, n=1, max_tokens=8, temperature=0.0, top_p=1.0)
    assert (s.n, s.max_tokens, s.temperature, s.top_p, s.seed, s.greedy) == (1, 8, 0.0, 1.0, 3, True)
    with pytest.raises(ValueError, match="n and max_tokens"):
        Sampling.resolve(cfg, n=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling.resolve(cfg, top_p=0.0)


def test_unseeded_config_draws_a_fresh_base_seed_per_call():
    cfg = GenerationConfig(seed=None)
    seeds = {Sampling.resolve(cfg).seed for _ in range(5)}
    assert len(seeds) > 1


def test_candidate_seed_depends_on_seed_prompt_and_index_only():
    assert candidate_seed(0, "abc", 1) == candidate_seed(0, "abc", 1)
    others = {candidate_seed(0, "abc", 0), candidate_seed(1, "abc", 1), candidate_seed(0, "abd", 1)}
    assert candidate_seed(0, "abc", 1) not in others
    assert all(0 <= s < 2**31 for s in others)


def test_count_until_eos_stops_at_the_first_eos_even_when_pad_is_eos():
    # SmolLM2 pads finished rows with its EOS (2): only tokens before the first one count.
    assert count_until_eos([5, 6, 2, 2, 2], [2]) == (2, True)
    assert count_until_eos([2, 2], [2]) == (0, True)
    assert count_until_eos([5, 6, 7], [2, 9]) == (3, False)
    assert count_until_eos([5, 9, 7], [2, 9]) == (1, True)


def test_eos_ids_join_tokenizer_and_generation_config():
    class Tok:
        eos_token_id = 2

    class Gen:
        eos_token_id = [7, 2]

    assert eos_token_ids(Tok(), Gen()) == [2, 7]
    assert eos_token_ids(Tok(), None) == [2]


def test_check_candidates_accepts_exactly_zero_to_n_minus_one():
    check_candidates(candidates([("a", 0), ("a", 1), ("b", 1), ("b", 0)]), ["a", "b"], 2)


@pytest.mark.parametrize("pairs, ids, message", [
    ([("a", 0), ("a", 1), ("b", 0)], ["a", "b"], "1 prompts without exactly candidates 0..1: b"),
    ([("a", 0), ("a", 0), ("b", 0), ("b", 1)], ["a", "b"], "without exactly candidates 0..1: a"),
    ([("a", 1), ("a", 2), ("b", 0), ("b", 1)], ["a", "b"], "without exactly candidates 0..1: a"),
    ([("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)], ["a", "b"], "candidates 0..1: a"),
    ([("a", 0), ("a", 1)], ["a", "b"], "1 prompts with no candidates: b"),
    ([("a", 0), ("a", 1), ("z", 0), ("z", 1)], ["a"], "not asked for: z"),
])
def test_check_candidates_names_the_offending_prompts(pairs, ids, message):
    with pytest.raises(GenerationError, match=message):
        check_candidates(candidates(pairs), ids, 2)


def test_flag_counts_count_empty_and_truncated_responses():
    table = pa.table({"response": ["ok", "  \n", "", "cut off"],
                      "finish_reason": ["stop", "stop", "length", "length"],
                      "num_tokens": pa.array([1, 0, 0, 4], pa.int32())})
    assert flag_counts(table) == {"empty": 2, "truncated": 2, "num_tokens": 5}
