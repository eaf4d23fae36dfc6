"""Per-iteration statistics the AIPO paper says matter, as pure functions of the stage tables.

Everything here takes pandas frames built from the Parquet contracts (storage/schemas.py) and
returns JSON-able dicts, so a test can recompute `stats.json` from the tables by hand:

- response length in tokens (mean/median/p90) of all candidates, chosen and rejected, and the
  per-pair chosen − rejected difference (paper §4.2: length exploitation);
- s_ref = log π_ref(y_w|x) − log π_ref(y_l|x): distribution, agreement rate P(s_ref > 0), and its
  correlation with |y_w| − |y_l| (paper Fig. 6);
- chosen/rejected log-probs under the reference, summed and length-normalised (paper Table 2);
- chosen-rejected similarity (paper Table 2), word n-gram overlap by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
HISTOGRAM_BINS = 20
_WORD = re.compile(r"\w+", re.UNICODE)

Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def _num(x: Any) -> float | None:
    """A float for JSON, or None for NaN / missing (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else x


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """count, mean, median, p90, std, min, max of `values` (None entries when empty)."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series) else values,
                     dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"count": 0, "mean": None, "median": None, "p90": None, "std": None,
                "min": None, "max": None}
    return {
        "count": int(arr.size), "mean": _num(arr.mean()), "median": _num(np.median(arr)),
        "p90": _num(np.quantile(arr, 0.9)), "std": _num(arr.std()),
        "min": _num(arr.min()), "max": _num(arr.max()),
    }


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list]:
    """Equal-width histogram: `edges` (bins + 1) and `counts` (bins)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(arr, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation, None when either side is constant or has < 2 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return None
    return _num(np.corrcoef(x, y)[0, 1])


# -- similarity ------------------------------------------------------------------------------
def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Every word n-gram of order 1..n of the lower-cased text."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)}


def ngram_overlap(a: str, b: str, n: int = 2) -> float:
    """Jaccard overlap of the word 1..n-gram sets of `a` and `b`: 1 identical, 0 disjoint.

    Two empty texts are identical (1.0); one empty text shares nothing (0.0).
    """
    ga, gb = word_ngrams(a, n), word_ngrams(b, n)
    if not ga and not gb:
        return 1.0
    return len(ga & gb) / len(ga | gb)


def ngram_similarity(n: int = 2) -> Similarity:
    """The default chosen/rejected similarity: word n-gram Jaccard overlap per pair."""

    def similarity(chosen: Sequence[str], rejected: Sequence[str]) -> np.ndarray:
        return np.array([ngram_overlap(c, r, n) for c, r in zip(chosen, rejected, strict=True)])

    similarity.method = f"word_ngram_jaccard_1to{n}"  # type: ignore[attr-defined]
    return similarity


# -- joining the tables ----------------------------------------------------------------------
def pair_frame(pairs: pd.DataFrame, generations: pd.DataFrame | None = None,
               ref_logps: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per pair: prompt_id, chosen, rejected, chosen_tokens, rejected_tokens, and when the
    reference ran: ref_chosen_logp, ref_rejected_logp, chosen_len, rejected_len, s_ref.

    Lengths in tokens come from the generation that produced each response (matched by prompt_id
    and text), so they are the same tokens as the all-candidates length; without generations they
    fall back to the reference pass's response lengths.
    """
    out = pairs[["prompt_id", "chosen", "rejected"]].copy()
    if generations is not None and len(generations):
        tokens = (generations[["prompt_id", "response", "num_tokens"]]
                  .drop_duplicates(["prompt_id", "response"]))
        for side in ("chosen", "rejected"):
            col = tokens.rename(columns={"response": side, "num_tokens": f"{side}_tokens"})
            out = out.merge(col, on=["prompt_id", side], how="left")
    if ref_logps is not None and len(ref_logps):
        cols = ["prompt_id", "ref_chosen_logp", "ref_rejected_logp", "chosen_len", "rejected_len"]
        out = out.merge(ref_logps[cols].drop_duplicates("prompt_id"), on="prompt_id", how="left")
        out["s_ref"] = out["ref_chosen_logp"] - out["ref_rejected_logp"]
        for side in ("chosen", "rejected"):
            if f"{side}_tokens" not in out:
                out[f"{side}_tokens"] = out[f"{side}_len"]
            else:
                out[f"{side}_tokens"] = out[f"{side}_tokens"].fillna(out[f"{side}_len"])
    for side in ("chosen", "rejected"):
        if f"{side}_tokens" not in out:
            out[f"{side}_tokens"] = np.nan
    out["length_diff"] = out["chosen_tokens"] - out["rejected_tokens"]
    return out


# -- the statistics --------------------------------------------------------------------------
def length_stats(generations: pd.DataFrame | None, pf: pd.DataFrame) -> dict[str, Any]:
    """Response length in tokens: all candidates, chosen, rejected, chosen − rejected."""
    all_tokens = generations["num_tokens"] if generations is not None else []
    diff = pf["length_diff"].to_numpy(dtype=np.float64)
    return {
        "all": summarize(all_tokens),
        "chosen": summarize(pf["chosen_tokens"].to_numpy(dtype=np.float64)),
        "rejected": summarize(pf["rejected_tokens"].to_numpy(dtype=np.float64)),
        "chosen_minus_rejected": summarize(diff),
        "chosen_longer_rate": _num(np.mean(diff[np.isfinite(diff)] > 0))
        if np.isfinite(diff).any() else None,
    }


def sref_stats(pf: pd.DataFrame) -> dict[str, Any] | None:
    """s_ref distribution, agreement rate and correlation with the length difference (Fig. 6).

    None when the iteration has no reference pass (reference-free loss).
    """
    if "s_ref" not in pf:
        return None
    s = pf["s_ref"].to_numpy(dtype=np.float64)
    ok = np.isfinite(s)
    if not ok.any():
        return None
    s_ok = s[ok]
    diff = pf["length_diff"].to_numpy(dtype=np.float64)
    both = ok & np.isfinite(diff)
    return {
        "summary": summarize(s_ok),
        "quantiles": {f"{q:g}": float(np.quantile(s_ok, q)) for q in QUANTILES},
        "histogram": histogram(s_ok),
        "agreement_rate": float(np.mean(s_ok > 0)),
        "corr_length_diff": pearson(s[both], diff[both]),
    }


def logp_stats(pf: pd.DataFrame) -> dict[str, Any] | None:
    """Reference log-probs of chosen/rejected, summed and per token (paper Table 2)."""
    if "ref_chosen_logp" not in pf:
        return None
    out = {}
    for side in ("chosen", "rejected"):
        logp = pf[f"ref_{side}_logp"].to_numpy(dtype=np.float64)
        length = pf[f"{side}_len"].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_token = np.where(length > 0, logp / length, np.nan)
        out[side] = summarize(logp)
        out[f"{side}_normalized"] = summarize(per_token)
    return out


def similarity_stats(pf: pd.DataFrame, similarity: Similarity | None = None) -> dict[str, Any]:
    """Chosen-rejected similarity per pair, summarised (paper Table 2: 0.86 self-generated)."""
    similarity = similarity or ngram_similarity()
    values = similarity(list(pf["chosen"]), list(pf["rejected"])) if len(pf) else np.array([])
    return {"method": getattr(similarity, "method", "custom"), **summarize(values)}


def prompt_stats(prompts: pd.DataFrame | None) -> dict[str, Any] | None:
    if prompts is None:
        return None
    by_source = prompts["source"].fillna("unknown").value_counts().sort_index()
    return {"total": len(prompts), "by_source": {str(k): int(v) for k, v in by_source.items()}}


def stage_records(successes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rows in/out, rejected per reason and wall time of every finished stage (`_SUCCESS`)."""
    stages = {
        name: {
            "rows_in": rec.get("rows_in"), "rows_out": rec.get("rows_out"),
            "rejected": dict(rec.get("rejected") or {}),
            "rejected_total": rec.get("rejected_total", sum((rec.get("rejected") or {}).values())),
            "seconds": rec.get("seconds"),
        }
        for name, rec in sorted(successes.items(), key=lambda kv: stage_order(kv[0]))
    }
    seconds = {k: v["seconds"] for k, v in stages.items() if isinstance(v["seconds"], int | float)}
    return {"stages": stages, "wall_seconds": seconds, "total_seconds": _num(sum(seconds.values()))}


def stage_order(name: str) -> tuple[int, str]:
    """Tables and plots list stages in pipeline order: the stage registry's."""
    # Imported here: the registry imports the stages, and the stats stage imports this module.
    from aipo_ray.pipeline.registry import stage_order as registry_order

    return registry_order(name)


def parse_metrics(lines: Iterable[str]) -> pd.DataFrame:
    """`train/metrics.jsonl` as a frame, one row per optimizer step; bad lines are skipped
    (a run in progress may be mid-write on the last one)."""
    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame) and "step" not in frame:
        frame["step"] = np.arange(1, len(frame) + 1)
    return frame


def training_summary(metrics: pd.DataFrame | None) -> dict[str, Any] | None:
    """Steps, and first / last / mean of every numeric metric of `train/metrics.jsonl`."""
    if metrics is None or not len(metrics):
        return None
    out: dict[str, Any] = {"steps": len(metrics), "metrics": {}}
    for col in metrics.columns:
        if col == "step":
            continue
        values = pd.to_numeric(metrics[col], errors="coerce").to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            out["metrics"][col] = {"first": _num(finite[0]), "last": _num(finite[-1]),
                                   "mean": _num(finite.mean())}
    return out


def iteration_stats(
    *, iteration: int, prompts: pd.DataFrame | None, generations: pd.DataFrame | None,
    pairs: pd.DataFrame | None, ref_logps: pd.DataFrame | None,
    successes: dict[str, dict[str, Any]], metrics: pd.DataFrame | None,
    similarity: Similarity | None = None,
) -> dict[str, Any]:
    """Everything in `iter_NNN/stats.json`; any missing table gives None for what needs it."""
    stats: dict[str, Any] = {"iteration": iteration, "prompts": prompt_stats(prompts)}
    stats["candidates"] = None if generations is None else {
        "rows": len(generations), "prompts": int(generations["prompt_id"].nunique()),
        "finish_reason": {str(k): int(v) for k, v in
                          generations["finish_reason"].value_counts().sort_index().items()},
    }
    if pairs is not None:
        pf = pair_frame(pairs, generations, ref_logps)
        stats["pairs"] = len(pf)
        stats["length"] = length_stats(generations, pf)
        stats["s_ref"] = sref_stats(pf)
        stats["ref_logps"] = logp_stats(pf)
        stats["similarity"] = similarity_stats(pf, similarity)
    else:
        stats["pairs"] = None
        stats["length"] = None if generations is None else {"all": summarize(generations["num_tokens"])}
        stats["s_ref"] = stats["ref_logps"] = stats["similarity"] = None
    stats.update(stage_records(successes))
    stats["training"] = training_summary(metrics)
    return stats
