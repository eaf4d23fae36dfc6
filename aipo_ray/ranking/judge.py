"""Judges that write their verdict: a score per response, or a letter per pair of responses.

Both take `reply(messages) -> replies`, a function that sends each user message to a judge model
and returns what it wrote, in order (a server over HTTP in http_judge.py, a local causal LM
generating greedily in llm_judge.py); the prompts and parsers live in judge_prompts.py.

- `PointwiseJudge`: one message per candidate with the Self-Rewarding LLM-as-a-Judge prompt;
  the score is the points the judge gives (0..5).
- `PairwiseLetterJudge`: the A/B prompt for every ordered pair (PairwiseRanker: full matrix or
  tournament, both orders); the comparator's logit is +1 when the left response (shown as A)
  wins, −1 when it loses.

A reply that cannot be read is asked again `parse_retries` times; if it still cannot be read,
the candidate (or comparison) gets no verdict and the whole prompt is rejected: its
`Ranking.rejections` entry says why, quoting the reply, and best/worst are −1 (the pairs stage
puts it in `_rejected/`). Guessing a verdict would put an unjudged response in a pair.
`Ranking.comparisons` counts the messages sent per prompt, retries included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from .base import PairwiseRanker, Ranking, ScoringRanker, best_worst_from_scores
from .judge_prompts import ab_prompt, parse_letter, parse_score, quote, self_rewarding_prompt
from .pairwise import num_candidates

ReplyFn = Callable[[list[str]], list[str]]
Shorten = Callable[[str, str], tuple[str, str]]  # (prompt, response) as the judge should see them

UNREADABLE = "unreadable_judgement"


def _ask(reply: ReplyFn, messages: list[str], parse: Callable, parse_retries: int,
         on_reply: Callable[[int], None]) -> tuple[list, dict[int, str]]:
    """Parsed verdicts per message (None where unreadable) and the last reply of each unreadable
    one; messages whose reply could not be read are asked again up to `parse_retries` times."""
    verdicts: list = [None] * len(messages)
    last: dict[int, str] = {}
    todo = list(range(len(messages)))
    for _ in range(1 + parse_retries):
        if not todo:
            break
        replies = reply([messages[k] for k in todo])
        failed = []
        for k, text in zip(todo, replies, strict=True):
            on_reply(k)
            verdicts[k] = parse(text)
            if verdicts[k] is None:
                failed.append(k)
                last[k] = text
            else:
                last.pop(k, None)
        todo = failed
    return verdicts, last


class PointwiseJudge(ScoringRanker):
    """Scores each candidate with the Self-Rewarding prompt; unreadable replies reject the prompt
    (its unscored candidates are NaN)."""

    def __init__(self, reply: ReplyFn, parse_retries: int = 1, shorten: Shorten | None = None):
        self.reply, self.parse_retries, self.shorten = reply, parse_retries, shorten

    def score(self, prompts: list[str], candidates: list[list[str]]) -> np.ndarray:
        return self.best_worst(prompts, candidates).scores

    def best_worst(self, prompts: list[str], candidates: list[list[str]]) -> Ranking:
        n = num_candidates(prompts, candidates)
        cells = [(b, i) for b in range(len(prompts)) for i in range(n)]
        shown = [self.shorten(prompts[b], candidates[b][i]) if self.shorten
                 else (prompts[b], candidates[b][i]) for b, i in cells]
        requests = np.zeros(len(prompts), dtype=np.int64)

        def count(k: int) -> None:
            requests[cells[k][0]] += 1

        points, last = _ask(self.reply, [self_rewarding_prompt(p, r) for p, r in shown],
                            parse_score, self.parse_retries, count)
        scores = np.full((len(prompts), n), np.nan, dtype=np.float64)
        for (b, i), value in zip(cells, points, strict=True):
            if value is not None:
                scores[b, i] = value
        failed: dict[int, list[int]] = {}
        for k in sorted(last):
            failed.setdefault(cells[k][0], []).append(k)
        rejections: list[str | None] = [None] * len(prompts)
        for b, ks in failed.items():
            which = ", ".join(str(cells[k][1]) for k in ks)
            rejections[b] = (f"{UNREADABLE}: no 'Score: 0..5' in the judge's reply for candidate(s) "
                             f"{which} after {1 + self.parse_retries} tries; last reply "
                             f"{quote(last[ks[0]])}")
        return _ranking(scores, requests, rejections)


class PairwiseLetterJudge(PairwiseRanker):
    """The A/B prompt for each ordered pair, aggregated like PairRM (full matrix or tournament)."""

    def __init__(self, reply: ReplyFn, mode: str = "full", parse_retries: int = 1):
        super().__init__(self._compare, mode)  # type: ignore[arg-type]
        self.reply, self.parse_retries = reply, parse_retries
        self._requests: Counter = Counter()
        self._unread: dict[str, tuple[str, str, str]] = {}  # prompt -> (left, right, last reply)

    def _compare(self, sources: list[str], lefts: list[str], rights: list[str]) -> torch.Tensor:
        messages = [ab_prompt(s, a, b) for s, a, b in zip(sources, lefts, rights, strict=True)]

        def count(k: int) -> None:
            self._requests[sources[k]] += 1

        letters, last = _ask(self.reply, messages, parse_letter, self.parse_retries, count)
        for k, text in last.items():
            self._unread.setdefault(sources[k], (lefts[k], rights[k], text))
        return torch.tensor([{"A": 1.0, "B": -1.0}.get(x, 0.0) for x in letters])

    def best_worst(self, prompts: list[str], candidates: list[list[str]]) -> Ranking:
        # Requests and failures are keyed by prompt text: within one batch a prompt appears
        # once (prompt_id is the hash of its text).
        self._requests, self._unread = Counter(), {}
        ranking = super().best_worst(prompts, candidates)
        rejections: list[str | None] = [None] * len(prompts)
        for b, prompt in enumerate(prompts):
            if prompt in self._unread:
                left, right, text = self._unread[prompt]
                i, j = candidates[b].index(left), candidates[b].index(right)
                rejections[b] = (f"{UNREADABLE}: no A or B in the judge's reply comparing "
                                 f"candidates {i} and {j} after {1 + self.parse_retries} tries; "
                                 f"last reply {quote(text)}")
        requests = np.array([self._requests[p] for p in prompts], dtype=np.int64)
        return _ranking(ranking.scores, requests, rejections, ranking.best_idx, ranking.worst_idx)


def _ranking(scores: np.ndarray, requests: np.ndarray, rejections: list[str | None],
             best: np.ndarray | None = None, worst: np.ndarray | None = None) -> Ranking:
    """A Ranking whose rejected prompts have best and worst −1."""
    if best is None or worst is None:
        best, worst = best_worst_from_scores(np.nan_to_num(scores, nan=-np.inf))
    rejected = np.array([r is not None for r in rejections], dtype=bool)
    best, worst = np.where(rejected, -1, best), np.where(rejected, -1, worst)
    return Ranking(scores, best.astype(np.int64), worst.astype(np.int64), requests,
                   rejections=rejections)
