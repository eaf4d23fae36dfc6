"""`aipo compare`: compare.json recomputable from the variants' Parquet tables, non-blank figures,
and win rates against one θ_0 on common prompts, θ_0 answered once and `aipo eval`'s cache reused.
(The real-stage sweep, killed and resumed, then compared with real generation: test_compare_sweep.py.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipo_ray.cli import main
from aipo_ray.models import POINTER
from aipo_ray.report.compare import compare_runs
from aipo_ray.storage.checkpoint import COMMITTED

from . import judges
from .checks import assert_compare_row_matches_parquet
from .runs import build_run
from .test_report import embedded_sections, missing_sections, non_blank

DATA_PLOTS = {"lengths", "reference", "training"}
EVAL_PLOTS = {"win_rate", "length_vs_lc"}


def build_sweep(tmp_path: Path, names=("dpo", "aipo"), models: bool = False,
                base: str = "builtin:smollm2-135m-instruct") -> list[str]:
    """Hand-made variants under one sweep root (with sweep.json), each with its own tables;
    `models` adds a θ_0 pointer (the same base for all) and two committed models per variant."""
    root = tmp_path / "sweep"
    dirs = []
    for k, name in enumerate(names):
        rd = build_run(str(root / name), iterations=2, seed=10 * k)
        if models:
            rd.write_json(f"models/iter_000/{POINTER}", {"path": base})
            for it in (1, 2):
                rd.write_json(f"models/iter_00{it}/{COMMITTED}", {"sha256": f"{name} θ_{it}"})
        dirs.append(rd.uri)
    (root / "sweep.json").write_text(json.dumps({"variants": [{"name": n} for n in names],
                                                 "failed": []}))
    return dirs


def test_compare_json_means_equal_the_parquet_tables_and_plots_are_drawn(tmp_path):
    dirs = build_sweep(tmp_path)
    result = compare_runs(dirs, evaluate=False)
    out = tmp_path / "sweep" / "compare"
    assert result["output"] == str(out)
    written = json.loads((out / "compare.json").read_text())
    assert set(written["variants"]) == {"dpo", "aipo"} and written["evaluation"] is None
    for name in ("dpo", "aipo"):
        variant = written["variants"][name]
        assert variant["run_dir"] == str(tmp_path / "sweep" / name)
        assert [r["iteration"] for r in variant["iterations"]] == [1, 2]
        assert variant["shared"] == {"stages_reused": 0, "seconds_saved": 0.0}
        for row in variant["iterations"]:
            assert_compare_row_matches_parquet(row, Path(variant["run_dir"]))
            assert row["win_rate_vs_base"] is None and row["lc_win_rate_vs_base"] is None
    # the variants really differ, so equal numbers would not be a copy of one run
    assert (written["variants"]["dpo"]["iterations"][0]["mean_response_tokens"]
            != written["variants"]["aipo"]["iterations"][0]["mean_response_tokens"])
    page = (out / "index.html").read_text()
    assert embedded_sections(page) == DATA_PLOTS and missing_sections(page) == EVAL_PLOTS
    for key in DATA_PLOTS:
        assert non_blank((out / f"{key}.png").read_bytes()), key


class LongerWins:
    """A judge that prefers the longer answer (in characters)."""

    def score(self, prompts, candidates):
        return [[float(len(c)) for c in cands] for cands in candidates]


def fake_generate(calls: Counter):
    """Answers whose length depends on the model: later models of the second variant ramble."""

    def generate(prompts: pd.DataFrame, model_uri: str) -> pd.DataFrame:
        calls[model_uri] += 1
        it = int(model_uri.rstrip("/")[-3:])
        words = [3 + it * (4 if "aipo" in model_uri else 1) + (k % 3) for k in range(len(prompts))]
        return pd.DataFrame({"prompt_id": prompts["prompt_id"],
                             "response": [" ".join(["word"] * w) for w in words],
                             "num_tokens": words, "finish_reason": ["stop"] * len(prompts)})

    return generate


def _responses(run: str, it: int) -> pd.DataFrame:
    return pd.read_parquet(f"{run}/eval/responses/iter_{it:03d}").set_index("prompt_id")


@pytest.mark.slow  # ~1.5 min; the compare tables are checked in the default suite
def test_win_rates_vs_one_base_answered_once_on_common_prompts_from_the_eval_cache(
        tmp_path, tiny_llama_path):
    dirs = build_sweep(tmp_path, models=True, base=tiny_llama_path)
    calls = Counter()
    judge = ["ranking.backend=callable",
             "ranking.callable=tests.report.judges:counted_longer_is_better"]
    judges.CALLS.clear()
    result = compare_runs(dirs, overrides=["eval.num_prompts=6", *judge],
                          generate_fn=fake_generate(calls))
    # 2 variants × 2 models × 6 prompts, each judged in both orders
    assert len(judges.CALLS) == 2 * 2 * 6 * 2
    # θ_0 answered once for both variants, in the first run's eval cache; every θ_t once
    assert calls == Counter({f"{dirs[0]}/models/iter_000": 1, **{
        f"{d}/models/iter_00{it}": 1 for d in dirs for it in (1, 2)}})
    assert not Path(dirs[1], "eval", "responses", "iter_000").exists()
    assert result["evaluation"]["prompts"]["n"] == 6
    base = _responses(dirs[0], 0)
    for d in dirs:
        for row in result["variants"][Path(d).name]["iterations"]:
            model = _responses(d, row["iteration"])
            assert set(model.index) == set(base.index)  # the same prompts for every model
            b = base.loc[model.index]
            la, lb = model["response"].str.len().to_numpy(), b["response"].str.len().to_numpy()
            wins = np.where(la > lb, 1.0, np.where(la == lb, 0.5, 0.0))
            assert row["win_rate_vs_base"] == pytest.approx(wins.mean())
            assert 0 <= row["lc_win_rate_vs_base"] <= 1 and row["eval_prompts"] == 6
            assert row["eval_mean_tokens"] == pytest.approx(model["num_tokens"].mean())
    out = tmp_path / "sweep" / "compare"
    for key in EVAL_PLOTS:
        assert non_blank((out / f"{key}.png").read_bytes()), key

    def must_not_generate(prompts, model_uri):
        raise AssertionError(f"regenerated {model_uri} although its answers are cached")

    again = compare_runs(dirs, overrides=["eval.num_prompts=6", *judge],
                         generate_fn=must_not_generate)
    assert again["variants"] == result["variants"]
    assert len(judges.CALLS) == 2 * 2 * 6 * 2  # every judgement from <output>/judgements.json
    # a judge given as an object has no identity to cache under: it is always asked
    third = compare_runs(dirs, overrides=["eval.num_prompts=6"], ranker=LongerWins(),
                         generate_fn=must_not_generate)
    assert third["variants"] == result["variants"]


def test_cli_compare_writes_to_the_sweep_root_or_asks_for_output(tmp_path, capsys):
    dirs = build_sweep(tmp_path)
    (tmp_path / "sweep" / "compare").mkdir()
    (tmp_path / "sweep" / "compare" / "win_rate.png").write_bytes(b"from an earlier comparison")
    assert main(["compare", *dirs, "--no-eval"]) == 0
    assert (tmp_path / "sweep" / "compare" / "compare.json").exists()
    assert not (tmp_path / "sweep" / "compare" / "win_rate.png").exists()  # no stale figure
    # the sweep root stands for its variants, in the sweep's order
    (tmp_path / "sweep" / "compare" / "compare.json").unlink()
    assert main(["compare", str(tmp_path / "sweep"), "--no-eval"]) == 0
    assert list(json.loads((tmp_path / "sweep" / "compare" / "compare.json").read_text())[
        "variants"]) == ["dpo", "aipo"]
    other = build_run(str(tmp_path / "elsewhere" / "run"), iterations=1).uri
    assert main(["compare", dirs[0], other, "--no-eval"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["compare", dirs[0], other, "--no-eval", "--output", str(tmp_path / "o")]) == 0
    assert set(json.loads((tmp_path / "o" / "compare.json").read_text())["variants"]) == {
        "dpo", "run"}
