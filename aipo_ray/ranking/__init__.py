"""Rankers of candidate responses: PairRM (llm-blender's numbers on current transformers), an LLM
judge, or a user's function; all behind the `Ranker` protocol, runnable as Ray Data actors."""

from .base import PairwiseRanker, Ranker, Ranking, ScoringRanker, best_worst_from_scores
from .build import build_ranker
from .http_judge import ChatClient, HTTPJudgeError
from .judge import PairwiseLetterJudge, PointwiseJudge
from .llm_judge import LLMJudge
from .pairrm import PairRM
from .pairwise import TournamentResult, full_matrix, scores_from_matrix, tournament
from .python_fn import CallableRanker, load_function
from .ray_actor import RankBatch, rank_pool
from .registry import RankerContext, available_rankers, register_ranker
from .reward_model import RewardModelRanker

__all__ = [
    "CallableRanker",
    "ChatClient",
    "HTTPJudgeError",
    "LLMJudge",
    "PairRM",
    "PairwiseLetterJudge",
    "PairwiseRanker",
    "PointwiseJudge",
    "RankBatch",
    "Ranker",
    "RankerContext",
    "Ranking",
    "RewardModelRanker",
    "ScoringRanker",
    "TournamentResult",
    "available_rankers",
    "best_worst_from_scores",
    "build_ranker",
    "full_matrix",
    "load_function",
    "rank_pool",
    "register_ranker",
    "scores_from_matrix",
    "tournament",
]
