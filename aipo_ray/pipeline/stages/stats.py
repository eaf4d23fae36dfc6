"""The last stage of an iteration: what the paper says to watch, written to `iter_NNN/stats.json`.

The numbers come from pure functions of the stage tables (aipo_ray.report.stats), so `aipo report`
and a test can recompute them from the Parquet files.
"""

from __future__ import annotations

import logging
import posixpath

from aipo_ray.pipeline.stage import Stage, StageContext, StageResult
from aipo_ray.report.collect import STATS_JSON, compute_stats, load_iteration
from aipo_ray.report.similarity import build_similarity

log = logging.getLogger(__name__)


class StatsStage(Stage):
    """Per-iteration statistics; `similarity` overrides the configured chosen/rejected similarity.

    `ref_logps` and `train` are inputs when present: a reference-free loss has no `ref_logps`
    table (its fingerprint entry is then None) and its s_ref statistics are null.
    """

    name = "stats"
    inputs = ("prompts", "generations", "rankings", "pairs", "ref_logps", "train")
    config_keys = ("eval.similarity_model", "eval.similarity_ngram")
    reusable = False  # writes iter_NNN/stats.json outside its directory; cheap to recompute

    def __init__(self, similarity=None):
        self.similarity = similarity

    def fingerprint_extra(self, ctx: StageContext) -> dict:
        custom = getattr(self.similarity, "method", "custom") if self.similarity else None
        return {"custom_similarity": custom}

    def run(self, ctx: StageContext) -> StageResult:
        data = load_iteration(ctx.run_dir, ctx.iteration)
        similarity = self.similarity or build_similarity(
            ctx.config.eval.similarity_model, ctx.config.eval.similarity_ngram, ctx.config.storage
        )
        stats = compute_stats(data, similarity)
        rel = posixpath.join(ctx.run_dir.model_name(ctx.iteration), STATS_JSON)
        ctx.run_dir.write_json(rel, stats)
        pairs = stats["pairs"] or 0
        log.info("iteration %d stats: %s", ctx.iteration, _headline(stats))
        return StageResult(rows_in=pairs, rows_out=pairs, extra={"stats": ctx.run_dir.uri_of(rel)})


def _headline(stats: dict) -> str:
    """One log line: mean lengths and the agreement rate."""
    parts = []
    length = stats.get("length") or {}
    for key in ("all", "chosen", "rejected"):
        mean = (length.get(key) or {}).get("mean")
        if mean is not None:
            parts.append(f"{key} len {mean:.1f}")
    s_ref = stats.get("s_ref") or {}
    if s_ref.get("agreement_rate") is not None:
        parts.append(f"agreement {s_ref['agreement_rate']:.2f}")
    return ", ".join(parts) or "no pairs"
