"""From a pairwise comparator to rankings: the full N×N matrix, or an O(N) best/worst tournament.

A comparator is any `compare(sources, lefts, rights) -> [K]` returning, per triple, a logit that
the left candidate beats the right one when shown in that order (PairRM, an LLM judge). Position
bias is removed by always evaluating both orders: the margin of i over j is
(M[i, j] − M[j, i]) / 2.

Score aggregation is llm-blender's `get_scores_from_cmps` ("max_logits"):
s_i = mean over all j of (M[i, j] − M[j, i]), with M[i, i] = 0.

Ties favour the earlier candidate everywhere, so with N identical candidates the best is the
first and the worst the last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

CompareFn = Callable[[list[str], list[str], list[str]], torch.Tensor]


def num_candidates(prompts: list[str], candidates: list[list[str]]) -> int:
    """The common N of a batch; rankers compare N candidates per prompt, the same N for all."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    sizes = {len(c) for c in candidates}
    if len(sizes) > 1:
        raise ValueError(f"candidate lists differ in length {sorted(sizes)}; group prompts by N first")
    return sizes.pop() if sizes else 0


def full_matrix(compare: CompareFn, prompts: list[str], candidates: list[list[str]]) -> torch.Tensor:
    """M[b, i, j] = compare(prompt b, candidate i, candidate j) for all i ≠ j; M[b, i, i] = 0."""
    n = num_candidates(prompts, candidates)
    index = [(b, i, j) for b in range(len(prompts)) for i in range(n) for j in range(n) if i != j]
    matrix = torch.zeros(len(prompts), n, n, dtype=torch.float32)
    if index:
        logits = compare(
            [prompts[b] for b, _, _ in index],
            [candidates[b][i] for b, i, _ in index],
            [candidates[b][j] for b, _, j in index],
        )
        b, i, j = (torch.tensor(col) for col in zip(*index, strict=True))
        matrix[b, i, j] = torch.as_tensor(logits, dtype=torch.float32).cpu()
    return matrix


def scores_from_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """[B, N, N] comparison logits → [B, N] scores, s_i = mean_j (M[i, j] − M[j, i])."""
    return (matrix - matrix.transpose(-1, -2)).mean(dim=-1)


@dataclass
class TournamentResult:
    """Winner and loser of the knockouts, and every comparison made on the way.

    `matrix` holds the logits of the pairs that were compared (both orders) and 0 elsewhere, so
    `scores` is the full-mode formula over the comparisons actually made.
    """

    best_idx: np.ndarray  # [B]
    worst_idx: np.ndarray  # [B]
    matrix: torch.Tensor  # [B, N, N]
    matches: list[list[tuple[int, int, float]]] = field(default_factory=list)  # (i, j, margin)

    @property
    def scores(self) -> torch.Tensor:
        return scores_from_matrix(self.matrix)


def tournament(compare: CompareFn, prompts: list[str], candidates: list[list[str]]) -> TournamentResult:
    """Best and worst of N with about 3N/2 comparisons (each evaluated in both orders).

    Round one pairs neighbours; winners enter a knockout for the best, losers one for the
    worst (an odd one out enters both). Each round of every prompt's brackets is one call to
    `compare`, so a batch of prompts advances together.
    """
    n = num_candidates(prompts, candidates)
    result = TournamentResult(
        best_idx=np.zeros(len(prompts), dtype=np.int64),
        worst_idx=np.zeros(len(prompts), dtype=np.int64),
        matrix=torch.zeros(len(prompts), n, n, dtype=torch.float32),
        matches=[[] for _ in prompts],
    )
    if n == 0:
        return result
    everyone = [list(range(n)) for _ in prompts]
    games = _pairings([(b, pool) for b, pool in enumerate(everyone)])
    margins = _play(compare, prompts, candidates, games, result)
    best = [[] for _ in prompts]
    worst = [[] for _ in prompts]
    for (b, i, j), margin in zip(games, margins, strict=True):
        winner, loser = (i, j) if margin >= 0 else (j, i)
        best[b].append(winner)
        worst[b].append(loser)
    for b in range(len(prompts)):
        if n % 2:  # the odd one out has not played yet: it can still be best or worst
            best[b].append(n - 1)
            worst[b].append(n - 1)
    while any(len(p) > 1 for p in best + worst):
        best_games = _pairings(list(enumerate(best)))
        worst_games = _pairings(list(enumerate(worst)))
        margins = _play(compare, prompts, candidates, best_games + worst_games, result)
        best = _advance(best, best_games, margins[: len(best_games)], keep_winner=True)
        worst = _advance(worst, worst_games, margins[len(best_games) :], keep_winner=False)
    result.best_idx[:] = [p[0] for p in best]
    result.worst_idx[:] = [p[0] for p in worst]
    return result


def _pairings(pools: list[tuple[int, list[int]]]) -> list[tuple[int, int, int]]:
    """Neighbours (pool[0], pool[1]), (pool[2], pool[3]), ... of each prompt's pool."""
    return [(b, pool[k], pool[k + 1]) for b, pool in pools for k in range(0, len(pool) - 1, 2)]


def _advance(pools, games, margins, keep_winner: bool) -> list[list[int]]:
    """Next pools: each game's winner (or loser), then the odd one out, order kept ascending."""
    nxt: list[list[int]] = [[] for _ in pools]
    for (b, i, j), margin in zip(games, margins, strict=True):
        i_wins = margin >= 0
        nxt[b].append(i if i_wins == keep_winner else j)
    for b, pool in enumerate(pools):
        if len(pool) % 2:
            nxt[b].append(pool[-1])
    return nxt


def _play(compare, prompts, candidates, games, result: TournamentResult) -> list[float]:
    """Evaluate each game in both orders; record logits and margins; return margins of i over j."""
    if not games:
        return []
    orders = [(b, i, j) for b, i, j in games] + [(b, j, i) for b, i, j in games]
    logits = torch.as_tensor(
        compare(
            [prompts[b] for b, _, _ in orders],
            [candidates[b][i] for b, i, _ in orders],
            [candidates[b][j] for b, _, j in orders],
        ),
        dtype=torch.float32,
    ).cpu()
    margins = []
    for k, (b, i, j) in enumerate(games):
        forward, backward = logits[k].item(), logits[k + len(games)].item()
        result.matrix[b, i, j] = forward
        result.matrix[b, j, i] = backward
        margin = (forward - backward) / 2
        result.matches[b].append((i, j, margin))
        margins.append(margin)
    return margins
