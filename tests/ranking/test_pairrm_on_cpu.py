"""PairRM on a tiny random DeBERTa: shapes, symmetry, batching, layouts, input cleaning, and the
full-matrix / tournament aggregation."""

import numpy as np
import pytest
import torch

from aipo_ray.ranking import PairRM, PairwiseRanker, scores_from_matrix, tournament

PROMPTS = ["what is the sum of one and two?", "write a short poem about the sea", "sort five two four"]
CANDIDATES = [
    ["three", "the answer is three because one plus two", "four five", "no"],
    ["sea sky river", "the sea is blue", "", "sea sky river"],
    ["two four five", "five four two", "four", "two five four"],
]


@pytest.fixture(scope="module")
def matrix(pairrm):
    return pairrm.compare_matrix(PROMPTS, CANDIDATES)


def test_matrix_and_scores_shapes_and_aggregation(pairrm, matrix):
    assert matrix.shape == (3, 4, 4)
    assert torch.equal(torch.diagonal(matrix, dim1=1, dim2=2), torch.zeros(3, 4))
    scores = pairrm.scores(PROMPTS, CANDIDATES)
    assert scores.shape == (3, 4)
    m = matrix[0]
    by_hand = [sum(m[i, j] - m[j, i] for j in range(4)) / 4 for i in range(4)]
    torch.testing.assert_close(scores[0], torch.stack(by_hand), atol=1e-6, rtol=0)
    torch.testing.assert_close(scores.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)


def test_swapping_candidates_flips_the_sign_of_the_score_difference(pairrm, matrix):
    swapped = [[c[1], c[0], *c[2:]] for c in CANDIDATES]
    s = pairrm.scores(PROMPTS, CANDIDATES)
    t = pairrm.scores(PROMPTS, swapped)
    torch.testing.assert_close(t[:, 0] - t[:, 1], -(s[:, 0] - s[:, 1]), atol=1e-5, rtol=0)
    m = pairrm.compare_matrix(PROMPTS, swapped)
    torch.testing.assert_close(m[:, 0, 1], matrix[:, 1, 0], atol=1e-5, rtol=0)
    assert (s[:, 0] - s[:, 1]).abs().min() > 1e-3  # the flip is of a nonzero difference


def test_identical_candidates_get_identical_scores(pairrm, matrix):
    s = pairrm.scores(PROMPTS, CANDIDATES)
    assert s[1, 0].item() == pytest.approx(s[1, 3].item(), abs=1e-6)
    assert matrix[1, 0, 3].item() == pytest.approx(matrix[1, 3, 0].item(), abs=1e-6)


def test_batch_of_three_equals_three_batches_of_one(pairrm, tiny_pairrm, matrix):
    singles = torch.cat([pairrm.compare_matrix([p], [c]) for p, c in zip(PROMPTS, CANDIDATES, strict=True)])
    torch.testing.assert_close(singles, matrix, atol=1e-5, rtol=0)
    one_at_a_time = PairRM.from_pretrained(tiny_pairrm["hf"], batch_size=1)
    torch.testing.assert_close(one_at_a_time.compare_matrix(PROMPTS, CANDIDATES), matrix, atol=1e-5, rtol=0)


def test_both_layouts_load_to_identical_numbers(tiny_pairrm, matrix):
    hf = PairRM.from_pretrained(tiny_pairrm["hf"], batch_size=4)
    torch.testing.assert_close(hf.compare_matrix(PROMPTS, CANDIDATES), matrix, atol=1e-6, rtol=0)
    # llm-blender's layout with the backbone given explicitly instead of from config.json
    explicit = PairRM.from_pretrained(tiny_pairrm["llm-blender"], backbone=tiny_pairrm["backbone"])
    torch.testing.assert_close(explicit.compare_matrix(PROMPTS[:1], CANDIDATES[:1]), matrix[:1], atol=1e-6, rtol=0)


def test_sep_text_and_prefix_strings_in_inputs_become_spaces(pairrm):
    enc = pairrm.encoder
    assert enc.encode_candidate("one [SEP] two", 50) == enc.encode_candidate("one   two", 50)
    assert enc.encode_source("a <|candidate2|> b") == enc.encode_source("a   b")
    ids, p1, p2 = enc.encode_pairs(["q"], ["x <|source|> y"], ["z"])[0]
    assert ids.count(enc.ids.source_prefix_id) == 1
    assert ids[p1] == enc.ids.cand1_prefix_id and ids[p2] == enc.ids.cand2_prefix_id


def test_unequal_candidate_counts_and_bad_paths_are_errors(pairrm, tmp_path):
    with pytest.raises(ValueError, match="group prompts by N"):
        pairrm.compare_matrix(["a", "b"], [["x", "y"], ["x"]])
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        PairRM.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="cannot tell which PairRM layout"):
        PairRM.from_pretrained(str(tmp_path))


def quality_judge(quality: dict[str, float], bias: float = 0.3):
    """A comparator with known preferences and a position bias (the left one gets +bias)."""

    def compare(sources, lefts, rights):
        return torch.tensor([quality[a] - quality[b] + bias for a, b in zip(lefts, rights, strict=True)])

    return compare


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 16])
def test_tournament_finds_best_and_worst_with_about_3n_over_2_comparisons(n):
    rng = np.random.default_rng(n)
    names = [f"c{k}" for k in range(n)]
    quality = dict(zip(names, rng.permutation(n).astype(float), strict=True))
    result = tournament(quality_judge(quality), ["p", "q"], [names, names[::-1]])
    for b, cands in enumerate([names, names[::-1]]):
        q = [quality[c] for c in cands]
        assert result.best_idx[b] == int(np.argmax(q))
        assert result.worst_idx[b] == int(np.argmin(q))
        assert len(result.matches[b]) == n // 2 + 2 * ((n + 1) // 2 - 1)
        for i, j, margin in result.matches[b]:
            assert margin == pytest.approx(q[i] - q[j])  # the position bias cancels


def test_tournament_ties_keep_the_first_as_best_and_the_last_as_worst():
    result = tournament(quality_judge({"same": 0.0}), ["p"], [["same"] * 5])
    assert (result.best_idx[0], result.worst_idx[0]) == (0, 4)
    torch.testing.assert_close(result.scores, torch.zeros(1, 5))


def test_pairrm_tournament_margins_are_the_full_matrix_margins(pairrm, matrix):
    result = pairrm.tournament(PROMPTS, CANDIDATES)
    for b, matches in enumerate(result.matches):
        assert len(matches) == 4  # 2 first-round games, 1 final for best, 1 for worst
        for i, j, margin in matches:
            expected = (matrix[b, i, j] - matrix[b, j, i]).item() / 2
            assert margin == pytest.approx(expected, abs=1e-5)
        best, worst = result.best_idx[b], result.worst_idx[b]
        assert best != worst
        # The best won every game it played, the worst lost every one.
        assert all((m >= 0) == (i == best) for i, j, m in matches if best in (i, j))
        assert all((m < 0) == (i == worst) for i, j, m in matches if worst in (i, j))


def test_pairwise_ranker_modes_and_comparison_counts(pairrm, matrix):
    full = PairwiseRanker(pairrm.compare_pairs, "full").best_worst(PROMPTS, CANDIDATES)
    np.testing.assert_allclose(full.scores, scores_from_matrix(matrix).numpy(), atol=1e-6)
    assert list(full.best_idx) == list(full.scores.argmax(axis=1))
    assert list(full.comparisons) == [12, 12, 12]
    quick = PairwiseRanker(pairrm.compare_pairs, "tournament").best_worst(PROMPTS, CANDIDATES)
    assert list(quick.comparisons) == [8, 8, 8]
    with pytest.raises(ValueError, match="unknown ranking mode"):
        PairwiseRanker(pairrm.compare_pairs, "bubble")
