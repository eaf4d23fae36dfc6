"""Shared assertion: an iteration's stats.json equals what pandas computes from its Parquet."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipo_ray.report.stats import ngram_overlap


def read_parts(path: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(f"{path}/part-*.parquet"))])


def assert_stats_match_parquet(run: Path, it: int) -> dict:
    """Recompute lengths, s_ref, reference log-probs and similarity of iteration `it` by hand."""
    base = Path(run) / f"iter_{it:03d}"
    stats = json.loads((base / "stats.json").read_text())
    gens, pairs, ref = (read_parts(base / n) for n in ("generations", "pairs", "ref_logps"))
    assert stats["iteration"] == it and stats["pairs"] == len(pairs) > 0

    assert stats["length"]["all"]["mean"] == pytest.approx(gens["num_tokens"].mean())
    assert stats["length"]["all"]["p90"] == pytest.approx(np.quantile(gens["num_tokens"], 0.9))
    tokens = dict(zip(zip(gens.prompt_id, gens.response, strict=True), gens.num_tokens, strict=True))
    chosen = np.array([tokens[k] for k in zip(pairs.prompt_id, pairs.chosen, strict=True)])
    rejected = np.array([tokens[k] for k in zip(pairs.prompt_id, pairs.rejected, strict=True)])
    assert stats["length"]["chosen"]["mean"] == pytest.approx(chosen.mean())
    assert stats["length"]["rejected"]["median"] == pytest.approx(np.median(rejected))
    assert stats["length"]["chosen_minus_rejected"]["mean"] == pytest.approx((chosen - rejected).mean())

    ref = ref.set_index("prompt_id").loc[pairs.prompt_id]
    s_ref = (ref.ref_chosen_logp - ref.ref_rejected_logp).to_numpy()
    assert stats["s_ref"]["agreement_rate"] == pytest.approx(np.mean(s_ref > 0))
    assert stats["s_ref"]["summary"]["median"] == pytest.approx(np.median(s_ref))
    assert sum(stats["s_ref"]["histogram"]["counts"]) == len(pairs)
    diff = chosen - rejected
    if len(pairs) > 1 and np.std(diff) > 0 and np.std(s_ref) > 0:
        assert stats["s_ref"]["corr_length_diff"] == pytest.approx(np.corrcoef(s_ref, diff)[0, 1])
    assert stats["ref_logps"]["chosen"]["mean"] == pytest.approx(ref.ref_chosen_logp.mean())
    assert stats["ref_logps"]["rejected_normalized"]["mean"] == pytest.approx(
        (ref.ref_rejected_logp / ref.rejected_len).mean())
    sims = [ngram_overlap(c, r) for c, r in zip(pairs.chosen, pairs.rejected, strict=True)]
    assert stats["similarity"]["mean"] == pytest.approx(np.mean(sims))
    return stats


def assert_compare_row_matches_parquet(row: dict, run: Path) -> None:
    """A `compare.json` row of `run` equals the means pandas computes from its Parquet tables:
    all candidates' tokens, and chosen/rejected tokens over the pairs the trainer used."""
    base = Path(run) / f"iter_{row['iteration']:03d}"
    gens, pairs = read_parts(base / "generations"), read_parts(base / "pairs")
    tokens = dict(zip(zip(gens.prompt_id, gens.response, strict=True), gens.num_tokens, strict=True))
    chosen = np.array([tokens[k] for k in zip(pairs.prompt_id, pairs.chosen, strict=True)])
    rejected = np.array([tokens[k] for k in zip(pairs.prompt_id, pairs.rejected, strict=True)])
    assert row["pairs"] == len(pairs)
    assert row["mean_response_tokens"] == pytest.approx(gens["num_tokens"].mean())
    assert row["mean_chosen_tokens"] == pytest.approx(chosen.mean())
    assert row["mean_rejected_tokens"] == pytest.approx(rejected.mean())
    assert row["mean_chosen_minus_rejected_tokens"] == pytest.approx((chosen - rejected).mean())
    if (base / "ref_logps").exists():
        ref = read_parts(base / "ref_logps").set_index("prompt_id").loc[pairs.prompt_id]
        assert row["sref_agreement"] == pytest.approx(
            np.mean(ref.ref_chosen_logp > ref.ref_rejected_logp))
        assert row["ref_rejected_logp"] == pytest.approx(ref.ref_rejected_logp.mean())
        assert row["ref_chosen_logp_per_token"] == pytest.approx(
            (ref.ref_chosen_logp / ref.chosen_len).mean())
    sims = [ngram_overlap(c, r) for c, r in zip(pairs.chosen, pairs.rejected, strict=True)]
    assert row["chosen_rejected_similarity"] == pytest.approx(np.mean(sims))
