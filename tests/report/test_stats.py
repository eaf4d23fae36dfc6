"""Per-iteration statistics: hand-computed cases, and stats.json recomputed from the Parquet."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stages.stats import StatsStage
from aipo_ray.report.stats import (
    ngram_overlap,
    pair_frame,
    parse_metrics,
    sref_stats,
    summarize,
    training_summary,
)

from .checks import assert_stats_match_parquet
from .runs import build_run


def test_summarize_matches_hand_computed_values():
    s = summarize([1, 2, 3, 4, 10])
    assert s["count"] == 5 and s["mean"] == 4.0 and s["median"] == 3.0
    assert s["p90"] == pytest.approx(7.6)  # linear interpolation: 4 + 0.6 * (10 - 4)
    assert summarize([])["mean"] is None
    assert summarize([float("nan"), 2.0])["count"] == 1


def test_ngram_overlap_is_jaccard_of_unigrams_and_bigrams():
    # {the, cat, sat, the cat, cat sat} vs {the, cat, ran, the cat, cat ran}: 3 shared of 7
    assert ngram_overlap("The cat sat", "the cat ran") == pytest.approx(3 / 7)
    assert ngram_overlap("same words here", "Same, words here!") == 1.0
    assert ngram_overlap("", "") == 1.0
    assert ngram_overlap("", "something") == 0.0
    assert ngram_overlap("a b", "c d") == 0.0


def test_pair_frame_takes_lengths_from_generations_and_sref_from_reference():
    gens = pd.DataFrame({
        "prompt_id": ["p", "p", "p", "q", "q"], "response": ["short", "a long one", "mid", "x", "y y"],
        "num_tokens": [1, 3, 2, 1, 2], "candidate_idx": [0, 1, 2, 0, 1],
    })
    pairs = pd.DataFrame({"prompt_id": ["p", "q"], "chosen": ["a long one", "x"],
                          "rejected": ["short", "y y"]})
    ref = pd.DataFrame({"prompt_id": ["p", "q"], "ref_chosen_logp": [-6.0, -2.0],
                        "ref_rejected_logp": [-2.0, -5.0], "chosen_len": [3, 1], "rejected_len": [1, 2]})
    pf = pair_frame(pairs, gens, ref)
    assert pf["chosen_tokens"].tolist() == [3, 1]
    assert pf["rejected_tokens"].tolist() == [1, 2]
    assert pf["length_diff"].tolist() == [2, -1]
    assert pf["s_ref"].tolist() == [-4.0, 3.0]
    s = sref_stats(pf)
    assert s["agreement_rate"] == 0.5
    assert s["summary"]["mean"] == -0.5
    # two points on a line of slope -7/3: correlation exactly -1
    assert s["corr_length_diff"] == pytest.approx(-1.0)


def test_parse_metrics_skips_a_half_written_last_line():
    frame = parse_metrics(['{"step": 1, "loss": 0.7}', '{"step": 2, "loss": 0.5}', '{"step": 3, "lo'])
    assert frame["loss"].tolist() == [0.7, 0.5]
    summary = training_summary(frame)
    assert summary["steps"] == 2
    assert summary["metrics"]["loss"] == {"first": 0.7, "last": 0.5, "mean": pytest.approx(0.6)}


def test_stats_json_is_recomputed_from_the_parquet_tables(tmp_path):
    build_run(str(tmp_path / "run"), iterations=2)
    for it in (1, 2):
        stats = assert_stats_match_parquet(tmp_path / "run", it)
        assert stats["pairs"] == 12
        assert stats["prompts"] == {"total": 12, "by_source": {"seed": 8, "self_instruct": 4}}


def test_stats_record_rejections_per_filter_wall_times_and_training(tmp_path):
    build_run(str(tmp_path / "run"), iterations=1)
    base = tmp_path / "run" / "iter_001"
    stats = json.loads((base / "stats.json").read_text())
    prompts = stats["stages"]["prompts"]
    assert prompts["rejected"] == {"too_short": 1, "blocked_keyword": 1}
    assert (prompts["rows_in"], prompts["rows_out"]) == (14, 12)
    assert set(stats["wall_seconds"]) == {"prompts", "generations", "rankings", "pairs",
                                          "ref_logps", "train"}
    success = json.loads((base / "prompts" / "_SUCCESS").read_text())
    assert stats["wall_seconds"]["prompts"] == success["seconds"]
    assert math.isclose(stats["total_seconds"], sum(stats["wall_seconds"].values()))
    assert stats["training"]["steps"] == 5
    assert stats["training"]["metrics"]["loss"]["last"] == pytest.approx(0.69 - 0.25)
    assert (base / "stats" / "_SUCCESS").exists()


def test_later_iterations_show_the_length_growth(tmp_path):
    build_run(str(tmp_path / "run"), iterations=2)
    s1, s2 = (json.loads((tmp_path / "run" / f"iter_00{i}" / "stats.json").read_text())
              for i in (1, 2))
    assert s2["length"]["chosen"]["mean"] > s1["length"]["chosen"]["mean"]
    assert s2["length"]["chosen_minus_rejected"]["mean"] > s1["length"]["chosen_minus_rejected"]["mean"]


def test_stats_stage_without_reference_reports_null_sref(tmp_path):
    rd = build_run(str(tmp_path / "run"), iterations=1, stats=False)
    rd.fs.rm(rd.stage_path(1, "ref_logps"), recursive=True)  # a reference-free loss: no table
    from aipo_ray.config import RunConfig

    config = RunConfig.model_validate(rd.read_json("run.json")["config"])
    record = run_stage(StatsStage(), StageContext(config=config, run_dir=rd, iteration=1))
    stats = rd.read_json("iter_001/stats.json")
    assert record["rows_out"] == 12
    assert stats["s_ref"] is None and stats["ref_logps"] is None
    assert stats["length"]["chosen"]["count"] == 12  # lengths still come from the generations
    again = run_stage(StatsStage(), StageContext(config=config, run_dir=rd, iteration=1))
    assert again.get("skipped") is True


def test_embedding_similarity_from_a_configured_encoder(tmp_path, tiny_llama_path):
    from aipo_ray.report.similarity import build_similarity

    sim = build_similarity(tiny_llama_path)
    values = sim(["the same text", "a cat sat", ""], ["the same text", "quantum flux", "x"])
    assert values.shape == (3,)
    assert values[0] == pytest.approx(1.0, abs=1e-5)  # identical texts
    assert np.all(values <= 1.0 + 1e-5) and np.all(values >= -1.0 - 1e-5)
    assert values[1] < values[0]
    assert sim.method == f"embedding_cosine:{tiny_llama_path}"
    assert len(sim([], [])) == 0
