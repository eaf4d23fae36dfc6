"""The pure parts of `make bench`: the fixed pairs, the paper-scale model, the table generator."""

import json

import pytest

from benchmarks import report, scaling
from benchmarks.pairs import make_pairs

MEASURED = {"tournament_comparisons_per_prompt": 12.0, "full_comparisons_per_prompt": 20.0,
            "vllm_backend_efficiency": 1.0, "ray_start_seconds": 5.0,
            "driver_seconds_between_stages": 0.0}


def test_training_pairs_are_64_distinct_prompts_and_the_same_every_time():
    a, b = make_pairs(64), make_pairs(64)
    assert a == b
    assert len(set(a["prompt_id"])) == 64
    assert all(c != r for c, r in zip(a["chosen"], a["rejected"], strict=True))


def test_paper_iteration_generation_time_matches_the_stated_rate():
    stages = scaling.iteration_seconds(8, MEASURED)
    tokens = 20_000 * 5 * 512  # pairs × N × response tokens
    io = 2 * 12.2e9 / 1e9  # 24.4 GB at 1 GB/s
    assert stages["generate"] == pytest.approx(90 + io + tokens / (2500 * 8))
    # Tournament ranking: 20K prompts × 12 ordered comparisons at 150/s per GPU on 8 GPUs.
    assert stages["rank"] == pytest.approx(20_000 * 12 / (150 * 8))


def test_paper_iteration_gets_faster_with_more_gpus_but_fixed_costs_remain():
    totals = [sum(scaling.iteration_seconds(g, MEASURED).values()) for g in (8, 16, 64)]
    assert totals[0] > totals[1] > totals[2]
    assert totals[2] > 90 + 120 + 3 * 24.4  # engine start, train start, checkpoint I/O


def _result(name, figures=None, **extra):
    return {"name": name, "date": "2026-11-25T00:00:00+00:00", "figures": figures or {},
            "sizes": {}, "versions": {"torch": "x"}, "machine": {"cpu": "cpu", "cores": 2}, **extra}


def test_report_replaces_only_the_generated_block(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "training_gpu.json").write_text(json.dumps(_result("training_gpu", skipped="no CUDA")))
    doc = tmp_path / "performance.md"
    doc.write_text(f"intro\n{report.BEGIN}\nold table\n{report.END}\noutro\n")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "DOC", doc)
    report.main()
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "old table" not in text
    assert "| training_gpu | skipped |" in text and "no CUDA" in text
    assert "| ranking | not run |" in text
