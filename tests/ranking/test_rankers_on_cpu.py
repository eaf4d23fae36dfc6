"""The Ranker backends behind build_ranker: callable, llm_judge (a tiny random Llama with SmolLM2's
tokenizer and chat template) and pairrm."""

import numpy as np
import pytest
import torch

from aipo_ray.config import RankingConfig
from aipo_ray.ranking import LLMJudge, PairwiseRanker, Ranker, best_worst_from_scores, build_ranker

PROMPTS = ["What is 2 + 2?", "Name a colour."]
CANDIDATES = [["4", "four, since 2 + 2 = 4", "5"], ["blue", "", "a colour is blue"]]


def by_length(prompt: str, candidates: list[str]) -> list[float]:
    """Longer is better: a user's scoring function, imported by name."""
    return [float(len(c)) for c in candidates]


def wrong_count(prompt: str, candidates: list[str]) -> list[float]:
    return [1.0]


def test_callable_backend_scores_by_the_users_function():
    ranker = build_ranker(RankingConfig(backend="callable", callable=f"{__name__}:by_length"))
    assert isinstance(ranker, Ranker)
    ranking = ranker.best_worst(PROMPTS, CANDIDATES)
    np.testing.assert_array_equal(ranking.scores, [[1, 21, 1], [4, 0, 16]])
    assert list(ranking.best_idx) == [1, 2]
    assert list(ranking.worst_idx) == [2, 1]  # ties: the later of the two shortest
    assert list(ranking.comparisons) == [0, 0]


def test_callable_backend_errors_name_the_function_and_the_problem():
    ranker = build_ranker(RankingConfig(backend="callable", callable=f"{__name__}:wrong_count"))
    with pytest.raises(ValueError, match=r"wrong_count: prompt 0 .* expected 3 finite numbers"):
        ranker.score(PROMPTS, CANDIDATES)
    with pytest.raises(AttributeError, match="has no 'nope'"):
        build_ranker(RankingConfig(backend="callable", callable=f"{__name__}:nope"))
    with pytest.raises(ValueError, match="expected 'module:function'"):
        build_ranker(RankingConfig(backend="callable", callable="no_colon"))


def test_best_worst_ties_first_best_last_worst():
    best, worst = best_worst_from_scores(np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 2.0]]))
    assert list(best) == [0, 1] and list(worst) == [2, 0]


@pytest.fixture(scope="module")
def judge(tiny_llama_path) -> LLMJudge:
    return LLMJudge.from_pretrained(tiny_llama_path, batch_size=3)


def test_judge_logit_is_log_p_a_minus_log_p_b_after_the_chat_template(judge, tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    prompt, a, b = PROMPTS[0], CANDIDATES[0][1], CANDIDATES[0][2]
    question = (
        "Which response follows the instruction better?\n\n### Instruction:\n" + prompt
        + "\n\n### Response A:\n" + a + "\n\n### Response B:\n" + b
        + "\n\nAnswer with a single letter, A or B."
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1], dim=-1)
    letter = {x: [tokenizer.encode(x, add_special_tokens=False)[0],
                  tokenizer.encode(" " + x, add_special_tokens=False)[0]] for x in "AB"}
    expected = torch.logsumexp(logp[letter["A"]], 0) - torch.logsumexp(logp[letter["B"]], 0)
    # Batched with longer and shorter rows (left padding) it is the same number.
    got = judge.compare_pairs([prompt, PROMPTS[1], prompt], [CANDIDATES[1][2], a, a], ["x", "y", b])
    assert got[2].item() == pytest.approx(expected.item(), abs=1e-4)
    assert abs(expected.item()) > 1e-3


def test_judge_asks_both_orders_so_candidate_order_does_not_matter(judge):
    ranker = PairwiseRanker(judge.compare_pairs, "full")
    scores = ranker.score(PROMPTS, CANDIDATES)
    rotated = ranker.score(PROMPTS, [[c[2], c[0], c[1]] for c in CANDIDATES])
    np.testing.assert_allclose(rotated, scores[:, [2, 0, 1]], atol=1e-4)
    assert np.abs(scores).max() > 1e-3


def test_judge_backend_loads_the_policy_or_a_named_model(tiny_llama_path):
    cfg = RankingConfig(backend="llm_judge", model="policy", mode="tournament", pair_batch_size=4)
    ranking = build_ranker(cfg, policy_model_path=tiny_llama_path).best_worst(PROMPTS, CANDIDATES)
    assert ranking.scores.shape == (2, 3) and list(ranking.comparisons) == [6, 6]
    named = build_ranker(RankingConfig(backend="llm_judge", model=tiny_llama_path, mode="tournament"))
    np.testing.assert_allclose(named.score(PROMPTS, CANDIDATES), ranking.scores, atol=1e-4)
    with pytest.raises(ValueError, match="no policy model path"):
        build_ranker(RankingConfig(backend="llm_judge", model="policy"))
    with pytest.raises(ValueError, match="not the PairRM default"):
        build_ranker(RankingConfig(backend="llm_judge"), policy_model_path=tiny_llama_path)


def test_pairrm_backend_from_config(tiny_pairrm, pairrm):
    cfg = RankingConfig(backend="pairrm", model=tiny_pairrm["hf"], mode="full", pair_batch_size=3)
    ranking = build_ranker(cfg).best_worst(PROMPTS, CANDIDATES)
    np.testing.assert_allclose(ranking.scores, pairrm.scores(PROMPTS, CANDIDATES).numpy(), atol=1e-5)
    assert list(ranking.comparisons) == [6, 6]


def test_smollm2_judges_offline_as_in_the_local_run(smollm2_path):
    """The local run's ranker: SmolLM2-135M-Instruct (builtin, from its GGUF) as the judge."""
    cfg = RankingConfig(backend="llm_judge", model="builtin:smollm2-135m-instruct", mode="tournament")
    judge = build_ranker(cfg)
    ranking = judge.best_worst(PROMPTS[:1], [CANDIDATES[0][:2]])
    assert np.isfinite(ranking.scores).all() and list(ranking.comparisons) == [2]
    assert ranking.scores[0, 0] == pytest.approx(-ranking.scores[0, 1], abs=1e-6)
    assert {ranking.best_idx[0], ranking.worst_idx[0]} == {0, 1}
