"""Preference pairs: the best and the worst candidate of each prompt (Algorithm 1, PairRM step).

Rules, in order, per prompt:
1. candidates cut at max_tokens (finish_reason 'length') and empty responses are dropped first
   (`drop_truncated`, `drop_empty`): a truncated answer wins or loses for its length, not its content;
2. chosen = highest score, rejected = lowest score among what is left (the ranking's own
   best_idx/worst_idx when they survived and still hold the extreme score; else the lowest
   candidate_idx holding it);
3. the ranker refused the prompt (`rankings.rejection`, e.g. a judge's unreadable reply), fewer
   than two candidates left, a tie (equal scores), a gap below `min_score_gap`, or chosen text
   equal to rejected text: the prompt gives no pair and goes to `_rejected` with the reason;
4. the first `max_pairs` pairs, in rankings order, are kept; the rest are surplus, not rejected.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from aipo_ray.config import PairsConfig
from aipo_ray.storage.schemas import PAIRS_OUT


@dataclass
class PairsResult:
    table: pa.Table
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    surplus: int = 0
    dropped_candidates: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_counts(self) -> dict[str, int]:
        return dict(Counter(r["reason"].split(":")[0] for r in self.rejected))


def candidate_problem(cand: dict[str, Any], cfg: PairsConfig) -> str | None:
    """Why a candidate (its metadata row, see `candidate_table`) may not be paired, or None."""
    if cfg.drop_empty and cand["empty"]:
        return "empty"
    if cfg.drop_truncated and cand.get("finish_reason") == "length":
        return "truncated"
    return None


def _extreme(valid: list[int], scores: list[float], hint: int, best: bool) -> int:
    target = max(scores[i] for i in valid) if best else min(scores[i] for i in valid)
    if hint in valid and scores[hint] == target:
        return hint
    return min(i for i in valid if scores[i] == target)


def candidate_table(generations: pa.Table) -> dict[str, dict[int, dict[str, Any]]]:
    """prompt_id -> candidate_idx -> metadata (row number, finish_reason, num_tokens, empty).

    Responses stay in Arrow: at the paper's scale (20K prompts × 5 candidates × up to 2048
    tokens) turning every one into a Python string would double the driver's memory.
    """
    text = pc.fill_null(generations.column("response"), "")
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    meta = generations.select(["prompt_id", "candidate_idx", "finish_reason", "num_tokens"])
    by_prompt: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row, cand in enumerate(meta.append_column("empty", empty).to_pylist()):
        by_prompt[cand["prompt_id"]][cand["candidate_idx"]] = {**cand, "row": row}
    return by_prompt


def pick_pair(
    candidates: dict[int, dict[str, Any]], ranking: dict[str, Any], cfg: PairsConfig,
    dropped: Counter, generations: pa.Table,
) -> tuple[dict[str, Any] | None, str | None]:
    """(pair row, None) or (None, reason) for one prompt; `dropped` counts refused candidates."""
    if ranking.get("rejection"):  # the ranker's own reason, category first ("unreadable_judgement: ...")
        return None, ranking["rejection"]
    scores = list(ranking["scores"] or [])
    if len(scores) != len(candidates) or set(candidates) != set(range(len(scores))):
        return None, (f"bad_scores: {len(scores)} scores for candidates "
                      f"{sorted(candidates)}")
    if any(s is None or not math.isfinite(s) for s in scores):
        return None, "bad_scores: a score is missing or not finite"
    valid = []
    for idx in sorted(candidates):
        problem = candidate_problem(candidates[idx], cfg)
        if problem is None:
            valid.append(idx)
        else:
            dropped[problem] += 1
    if len(valid) < 2:
        return None, f"too_few_candidates: {len(valid)} of {len(scores)} usable"
    best = _extreme(valid, scores, ranking.get("best_idx"), best=True)
    # Never the same candidate twice: with ties allowed, an all-equal prompt still gives two texts.
    worst = _extreme([i for i in valid if i != best], scores, ranking.get("worst_idx"), best=False)
    gap = scores[best] - scores[worst]
    if gap == 0 and cfg.drop_ties:
        return None, f"tie: every usable candidate scores {scores[best]:.4g}"
    if gap < cfg.min_score_gap:
        return None, f"small_gap: {gap:.4g} < min_score_gap {cfg.min_score_gap}"
    chosen, rejected = candidates[best], candidates[worst]
    chosen_text, rejected_text = (
        generations.column("response")[c["row"]].as_py() or "" for c in (chosen, rejected))
    if chosen_text.strip() == rejected_text.strip():
        return None, "identical_responses: chosen and rejected texts are equal"
    return {
        "prompt_id": chosen["prompt_id"],
        "prompt": generations.column("prompt")[chosen["row"]].as_py(),
        "chosen": chosen_text, "rejected": rejected_text,
        "chosen_score": float(scores[best]), "rejected_score": float(scores[worst]),
        "chosen_idx": best, "rejected_idx": worst,
        "chosen_num_tokens": chosen["num_tokens"], "rejected_num_tokens": rejected["num_tokens"],
    }, None


def select_pairs(generations: pa.Table, rankings: pa.Table, cfg: PairsConfig) -> PairsResult:
    """One (chosen, rejected) pair per usable prompt, in rankings order, capped at max_pairs."""
    by_prompt = candidate_table(generations)
    ranked = rankings.to_pylist()
    result = PairsResult(table=PAIRS_OUT.empty_table(), rows_in=len(ranked))
    dropped: Counter = Counter()
    pairs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, ranking in enumerate(ranked):
        pid = ranking["prompt_id"]
        if pid in seen:
            result.rejected.append({"reason": "duplicate_ranking: prompt ranked twice",
                                    "prompt_id": pid, "_row": n})
            continue
        seen.add(pid)
        if pid not in by_prompt:
            reason, pair = "no_generations: ranked prompt has no candidates", None
        else:
            pair, reason = pick_pair(by_prompt[pid], ranking, cfg, dropped, generations)
        if pair is None:
            result.rejected.append({"reason": reason, "prompt_id": pid, "_row": n,
                                    "scores": ranking.get("scores")})
        elif cfg.max_pairs is not None and len(pairs) >= cfg.max_pairs:
            result.surplus += 1
        else:
            pairs.append(pair)
    for pid in sorted(by_prompt.keys() - seen):
        result.rejected.append({"reason": "no_ranking: generated prompt was not ranked",
                                "prompt_id": pid})
        result.rows_in += 1
    result.dropped_candidates = dict(dropped)
    if pairs:
        result.table = pa.Table.from_pylist(pairs, schema=PAIRS_OUT)
    return result
