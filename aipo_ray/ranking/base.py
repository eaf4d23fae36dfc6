"""The Ranker protocol: scores for each prompt's candidates, and the best and worst of them.

Backends (see `build.py`): `pairrm` (PairRM, full matrix or tournament), `llm_judge` (a causal LM
asked "A or B?" in both orders), `callable` (a user's function). All take a batch of prompts with
the same number N of candidates each; the Ray Data wrapper groups prompts by N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from .pairwise import CompareFn, full_matrix, num_candidates, scores_from_matrix, tournament


@dataclass
class Ranking:
    """What the rankings table records per prompt, plus how much work it took.

    `comparisons` counts model evaluations of ordered pairs (a both-orders comparison counts 2),
    or for judges that write their verdict the requests sent (retries included); 0 for rankers
    that score candidates directly. `rejections`, when given, holds per prompt None or why the
    ranker could not rank it (a judge's unreadable reply); a rejected prompt has best and worst
    −1 and the pairs stage puts it in `_rejected/` with that reason.
    """

    scores: np.ndarray  # [B, N] float64, higher is better
    best_idx: np.ndarray  # [B] int64
    worst_idx: np.ndarray  # [B] int64
    comparisons: np.ndarray  # [B] int64
    rejections: list[str | None] | None = None


@runtime_checkable
class Ranker(Protocol):
    def score(self, prompts: list[str], candidates: list[list[str]]) -> np.ndarray:
        """[B, N] scores, higher is better; every prompt has the same N."""
        ...

    def best_worst(self, prompts: list[str], candidates: list[list[str]]) -> Ranking:
        """Scores and the best and worst candidate index of each prompt."""
        ...


def best_worst_from_scores(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax and argmin per row; ties go to the earlier candidate for best, the later for worst,
    the same convention as the tournament, so N equal scores give best 0 and worst N − 1."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[-1] == 0:
        empty = np.zeros(scores.shape[0], dtype=np.int64)
        return empty, empty
    best = scores.argmax(axis=-1)
    worst = scores.shape[-1] - 1 - scores[:, ::-1].argmin(axis=-1)
    return best.astype(np.int64), worst.astype(np.int64)


class ScoringRanker:
    """Base for rankers that only produce scores: best and worst follow from them."""

    def score(self, prompts: list[str], candidates: list[list[str]]) -> np.ndarray:
        raise NotImplementedError

    def best_worst(self, prompts: list[str], candidates: list[list[str]]) -> Ranking:
        scores = self.score(prompts, candidates)
        best, worst = best_worst_from_scores(scores)
        return Ranking(scores, best, worst, np.zeros(len(scores), dtype=np.int64))


class PairwiseRanker(ScoringRanker):
    """Any pairwise comparator (PairRM, an LLM judge) as a Ranker.

    mode "full": all N(N−1) ordered comparisons, scores s_i = mean_j M[i, j] − M[j, i] (the
    paper's and llm-blender's aggregation). mode "tournament": knockouts for best and worst with
    about 3N/2 comparisons in both orders; scores use the same formula over the comparisons made
    (0 for pairs never compared), so only best and worst are exact, not the full order.
    """

    def __init__(self, compare: CompareFn, mode: Literal["full", "tournament"] = "full"):
        if mode not in ("full", "tournament"):
            raise ValueError(f"unknown ranking mode {mode!r}; use 'full' or 'tournament'")
        self.compare = compare
        self.mode = mode

    def score(self, prompts: list[str], candidates: list[list[str]]) -> np.ndarray:
        return self.best_worst(prompts, candidates).scores

    def best_worst(self, prompts: list[str], candidates: list[list[str]]) -> Ranking:
        n = num_candidates(prompts, candidates)
        if self.mode == "tournament":
            result = tournament(self.compare, prompts, candidates)
            made = np.array([2 * len(m) for m in result.matches], dtype=np.int64)
            scores = result.scores.double().numpy()
            return Ranking(scores, result.best_idx, result.worst_idx, made)
        scores = scores_from_matrix(full_matrix(self.compare, prompts, candidates)).double().numpy()
        best, worst = best_worst_from_scores(scores)
        return Ranking(scores, best, worst, np.full(len(prompts), n * (n - 1), dtype=np.int64))
