"""Pairs from hand-built generations and rankings: best/worst, drops, ties, gaps, cap."""

import pyarrow as pa
import pytest

from aipo_ray.config import PairsConfig
from aipo_ray.data.pairs import select_pairs
from aipo_ray.storage.schemas import GENERATIONS, PAIRS, PAIRS_OUT, RANKINGS


def tables(prompts):
    """prompts: {pid: [(response, finish_reason, score), ...]} -> (generations, rankings)."""
    gens, ranks = [], []
    for pid, cands in prompts.items():
        scores = [c[2] for c in cands]
        for j, (resp, finish, _) in enumerate(cands):
            gens.append(dict(prompt_id=pid, prompt=f"prompt {pid}", candidate_idx=j, response=resp,
                             num_tokens=len(resp.split()), finish_reason=finish))
        ranks.append(dict(prompt_id=pid, scores=scores, best_idx=scores.index(max(scores)),
                          worst_idx=scores.index(min(scores))))
    return pa.Table.from_pylist(gens, schema=GENERATIONS), pa.Table.from_pylist(ranks, schema=RANKINGS)


def reasons(result):
    return {r["prompt_id"]: r["reason"].split(":")[0] for r in result.rejected}


def test_best_and_worst_with_scores_and_lengths():
    gens, ranks = tables({"p": [("a b c", "stop", 0.1), ("a b c d e", "stop", 0.9),
                                ("a", "stop", -0.4), ("a b", "stop", 0.0)]})
    result = select_pairs(gens, ranks, PairsConfig())
    assert result.table.schema == PAIRS_OUT
    assert set(PAIRS.names) <= set(result.table.column_names)
    assert result.table.to_pylist() == [dict(
        prompt_id="p", prompt="prompt p", chosen="a b c d e", rejected="a", chosen_score=0.9,
        rejected_score=-0.4, chosen_idx=1, rejected_idx=2, chosen_num_tokens=5,
        rejected_num_tokens=1)]
    assert result.rejected == [] and result.rows_in == 1


def test_truncated_and_empty_candidates_are_dropped_before_choosing():
    gens, ranks = tables({
        "p": [("long cut off", "length", 5.0), ("ok best", "stop", 1.0), ("   ", "stop", -9.0),
              ("ok worst", "stop", 0.5)],
        "q": [("cut", "length", 1.0), ("", "stop", 0.0), ("only one", "stop", 0.5)],
    })
    result = select_pairs(gens, ranks, PairsConfig())
    row = result.table.to_pylist()[0]
    assert (row["chosen"], row["rejected"], row["chosen_idx"], row["rejected_idx"]) == (
        "ok best", "ok worst", 1, 3)
    assert reasons(result) == {"q": "too_few_candidates"}
    assert result.dropped_candidates == {"truncated": 2, "empty": 2}
    kept = select_pairs(gens, ranks, PairsConfig(drop_truncated=False, drop_empty=False))
    assert kept.table.column("chosen").to_pylist() == ["long cut off", "cut"]
    assert kept.table.column("rejected").to_pylist() == ["   ", ""]


def test_ties_gaps_and_equal_texts_are_rejected_with_reasons():
    gens, ranks = tables({
        "tie": [("x one", "stop", 0.3), ("x two", "stop", 0.3)],
        "gap": [("y one", "stop", 0.30), ("y two", "stop", 0.25)],
        "same": [("same text", "stop", 1.0), ("same text ", "stop", 0.0)],
        "ok": [("z one", "stop", 1.0), ("z two", "stop", 0.0)],
    })
    result = select_pairs(gens, ranks, PairsConfig(min_score_gap=0.1))
    assert result.table.column("prompt_id").to_pylist() == ["ok"]
    assert reasons(result) == {"tie": "tie", "gap": "small_gap", "same": "identical_responses"}
    assert result.rejected_counts == {"tie": 1, "small_gap": 1, "identical_responses": 1}
    # With ties allowed, an all-equal prompt still pairs two different candidates.
    loose = select_pairs(gens, ranks, PairsConfig(drop_ties=False))
    assert reasons(loose) == {"same": "identical_responses"}
    tie = next(r for r in loose.table.to_pylist() if r["prompt_id"] == "tie")
    assert (tie["chosen_idx"], tie["rejected_idx"], tie["chosen_score"] - tie["rejected_score"]) == (
        0, 1, 0.0)


def test_cap_keeps_the_first_pairs_in_rankings_order():
    gens, ranks = tables({f"p{i}": [(f"good {i}", "stop", 1.0), (f"bad {i}", "stop", 0.0)]
                          for i in range(5)})
    result = select_pairs(gens, ranks, PairsConfig(max_pairs=3))
    assert result.table.column("prompt_id").to_pylist() == ["p0", "p1", "p2"]
    assert result.surplus == 2 and result.rejected == []


def test_ranking_hints_win_ties_among_the_extremes():
    gens, ranks = tables({"p": [("a", "stop", 1.0), ("b", "stop", 1.0), ("c", "stop", 0.0)]})
    ranks = ranks.set_column(2, "best_idx", pa.array([1], pa.int32()))
    row = select_pairs(gens, ranks, PairsConfig()).table.to_pylist()[0]
    assert (row["chosen_idx"], row["rejected_idx"]) == (1, 2)


@pytest.mark.parametrize(("scores", "reason"), [
    ([1.0], "bad_scores"), ([1.0, float("nan")], "bad_scores"), ([1.0, None], "bad_scores"),
])
def test_malformed_scores_are_rejected(scores, reason):
    gens, _ = tables({"p": [("a", "stop", 0), ("b", "stop", 0)]})
    ranks = pa.Table.from_pylist([dict(prompt_id="p", scores=scores, best_idx=0, worst_idx=0)],
                                 schema=RANKINGS)
    assert reasons(select_pairs(gens, ranks, PairsConfig())) == {"p": reason}


def test_unmatched_prompts_on_either_side_are_rejected():
    gens, ranks = tables({"a": [("x", "stop", 1.0), ("y", "stop", 0.0)]})
    gens_b, ranks_b = tables({"b": [("x", "stop", 1.0), ("y", "stop", 0.0)]})
    result = select_pairs(pa.concat_tables([gens, gens_b]), ranks, PairsConfig())
    assert reasons(result) == {"b": "no_ranking"} and result.rows_in == 2
    result = select_pairs(gens, pa.concat_tables([ranks, ranks_b, ranks]), PairsConfig())
    assert reasons(result) == {"b": "no_generations", "a": "duplicate_ranking"}
    assert result.table.num_rows == 1
