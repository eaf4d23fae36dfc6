"""The judge prompts and the parsers of what a judge writes back, on hand-written replies; the
pointwise and pairwise judges on a scripted reply function."""

import re

import numpy as np
import pytest

from aipo_ray.config import RankingConfig
from aipo_ray.ranking.judge import PairwiseLetterJudge, PointwiseJudge
from aipo_ray.ranking.judge_prompts import (
    SELF_REWARDING_TEMPLATE,
    judge_mode,
    parse_letter,
    parse_score,
    self_rewarding_prompt,
)
from aipo_ray.ranking.llm_judge import JUDGE_TEMPLATE


def test_the_self_rewarding_prompt_is_the_papers_with_five_criteria():
    text = self_rewarding_prompt("What is 2+2?", "4")
    assert text.startswith("Review the user's question and the corresponding response using the "
                           "additive 5-point scoring system described below.")
    for opening in ("- Add 1 point if", "- Add another point if", "- Award a third point if",
                    "- Grant a fourth point if", "- Bestow a fifth point for"):
        assert text.count(opening) == 1
    assert "User: What is 2+2?\n\n<response>4</response>" in text
    assert '- Conclude with the score using the format: "Score: <total points>"' in text
    assert text.endswith("we'll systematically attribute points based on the outlined criteria.")
    assert SELF_REWARDING_TEMPLATE.count("{") == 2  # only the two placeholders


@pytest.mark.parametrize("reply, points", [
    ("The response is relevant and complete.\nScore: 4", 4.0),
    ("Score: 4/5", 4.0),
    ("**Score:** 3", 3.0),
    ("score: 0", 0.0),
    ("Total score = 5 points", 5.0),
    ("Score: 2.5", 2.5),
    ("First I thought Score: 2, but on reflection... Score: 3", 3.0),  # the last one counts
])
def test_parse_score_reads_the_total(reply, points):
    assert parse_score(reply) == points


@pytest.mark.parametrize("reply", [
    "", None, "A fine answer.", 'Conclude with "Score: <total points>"', "Score: 6", "Score: 7/10",
    "Score: -1", "I would give it four points.",
])
def test_parse_score_is_none_when_absent_or_out_of_range(reply):
    assert parse_score(reply) is None


@pytest.mark.parametrize("reply, letter", [
    ("A", "A"), (" B.\n", "B"), ("**Response B**", "B"), ("[[A]]", "A"), ("Answer: B", "B"),
    ("The better response is A because it is shorter.", "A"), ("A. It answers the question.", "A"),
    ("Response B is better than Response A", "B"), ("(A)", "A"),
])
def test_parse_letter_reads_the_pick(reply, letter):
    assert parse_letter(reply) == letter


@pytest.mark.parametrize("reply", ["", None, "Both are fine.", "a good answer", "I cannot decide",
                                   "Answer with a single letter"])
def test_parse_letter_is_none_without_a_pick(reply):
    assert parse_letter(reply) is None


def test_the_http_pairwise_prompt_is_llm_judges():
    from aipo_ray.ranking.judge_prompts import ab_prompt

    assert ab_prompt("p", "x", "y") == JUDGE_TEMPLATE.format(prompt="p", response_a="x",
                                                              response_b="y")


def test_judge_mode_follows_the_prompt_and_refuses_a_pairwise_self_rewarding_judge():
    assert judge_mode(RankingConfig()) == "pairwise"
    assert judge_mode(RankingConfig(judge_prompt="self_rewarding")) == "pointwise"
    assert judge_mode(RankingConfig(judge_mode="pointwise")) == "pointwise"
    with pytest.raises(ValueError, match="judge_mode 'pairwise'"):
        RankingConfig(backend="llm_judge", model="policy", judge_prompt="self_rewarding",
                      judge_mode="pairwise")


def worth(text: str) -> int:
    return int(re.search(r"worth (\d+)", text).group(1))


def scripted(messages):
    """A judge that reads each response's worth from its text."""
    out = []
    for m in messages:
        if "<response>" in m:
            out.append(f"Looks fine. Score: {worth(m.split('<response>')[1])}")
        else:
            a, b = m.split("### Response A:\n")[1].split("### Response B:\n")
            out.append("A" if worth(a) >= worth(b) else "B")
    return out


CANDS = [["worth 1", "worth 4", "worth 2"], ["worth 3", "worth 0", "worth 5"]]


def test_pointwise_judge_scores_are_the_points():
    ranking = PointwiseJudge(scripted).best_worst(["p", "q"], CANDS)
    np.testing.assert_array_equal(ranking.scores, [[1, 4, 2], [3, 0, 5]])
    assert ranking.best_idx.tolist() == [1, 2] and ranking.worst_idx.tolist() == [0, 1]
    assert ranking.comparisons.tolist() == [3, 3] and ranking.rejections == [None, None]


@pytest.mark.parametrize("mode, requests", [("full", 6), ("tournament", 6)])
def test_pairwise_letter_judge_finds_best_and_worst(mode, requests):
    ranking = PairwiseLetterJudge(scripted, mode).best_worst(["p", "q"], CANDS)
    assert ranking.best_idx.tolist() == [1, 2] and ranking.worst_idx.tolist() == [0, 1]
    assert ranking.comparisons.tolist() == [requests, requests]
    assert ranking.rejections == [None, None]


def test_an_unreadable_judgement_is_asked_again_then_rejects_the_prompt():
    calls = []

    def flaky(messages):
        calls.append(len(messages))
        return ["no idea" if "worth 4" in m else scripted([m])[0] for m in messages]

    ranking = PointwiseJudge(flaky, parse_retries=1).best_worst(["p", "q"], CANDS)
    assert calls == [6, 1]  # only the unreadable one is asked again
    assert ranking.rejections[1] is None and ranking.best_idx[1] == 2
    assert ranking.rejections[0].startswith("unreadable_judgement: ")
    assert "candidate(s) 1 after 2 tries" in ranking.rejections[0]
    assert "'no idea'" in ranking.rejections[0]
    assert (ranking.best_idx[0], ranking.worst_idx[0]) == (-1, -1)
    assert np.isnan(ranking.scores[0, 1]) and ranking.scores[0, 0] == 1
    assert ranking.comparisons.tolist() == [4, 3]


def test_an_unreadable_letter_rejects_the_prompt_it_belongs_to():
    def flaky(messages):
        return ["hmm" if "worth 0" in m else scripted([m])[0] for m in messages]

    ranking = PairwiseLetterJudge(flaky, "full").best_worst(["p", "q"], CANDS)
    assert ranking.rejections[0] is None and ranking.best_idx[0] == 1
    assert "no A or B in the judge's reply comparing candidates" in ranking.rejections[1]
    assert (ranking.best_idx[1], ranking.worst_idx[1]) == (-1, -1)
    assert ranking.comparisons.tolist() == [6, 6 + 4]  # 4 comparisons involve candidate 1
