"""`aipo eval`: real generation with committed tiny models, a ranker loaded from config, eval.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aipo_ray.cli import main
from aipo_ray.report.evaluate import committed_models, comparison_plan, evaluate_run
from aipo_ray.storage import make_prompt_id

from .model_runs import PROMPTS, TRAINED, build_model_run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, ray_cluster, tiny_llama_path, smollm2_path):
    """A model run evaluated once (real hf generation on the local Ray cluster)."""
    root = tmp_path_factory.mktemp("eval")
    rd = build_model_run(root, tiny_llama_path, smollm2_path)
    result = evaluate_run(rd.uri)
    return rd, result


def test_comparison_plan_pairs_each_model_with_previous_and_base():
    assert comparison_plan([0, 1, 2, 3], True) == [
        (1, 0, "vs_previous"), (2, 1, "vs_previous"), (2, 0, "vs_base"),
        (3, 2, "vs_previous"), (3, 0, "vs_base")]
    assert comparison_plan([0, 2], False) == [(2, 0, "vs_previous")]


def _responses(rd, it: int) -> pd.DataFrame:
    return pd.read_parquet(f"{rd.root}/eval/responses/iter_{it:03d}/part-00000.parquet")


def test_eval_writes_win_rates_with_intervals_recomputable_from_responses(evaluated):
    rd, result = evaluated
    assert committed_models(rd) == [0, 1, 2]
    assert json.loads(rd.fs.cat_file(rd.path("eval.json"))) == result
    assert [(c["model"], c["baseline"], c["kind"]) for c in result["comparisons"]] == [
        ("iter_001", "iter_000", "vs_previous"), ("iter_002", "iter_001", "vs_previous"),
        ("iter_002", "iter_000", "vs_base")]
    # held out: the seed prompts minus the three that iteration 1 trained on, 4 of those 5
    held = {make_prompt_id(p) for p in PROMPTS} - {make_prompt_id(p) for p in TRAINED}
    assert result["prompts"]["n"] == 4
    for c in result["comparisons"]:
        a, b = (_responses(rd, int(c[k][-3:])).set_index("prompt_id") for k in ("model", "baseline"))
        assert set(a.index) <= held and set(a.index) == set(b.index)
        b = b.loc[a.index]
        la, lb = a["response"].str.len().to_numpy(), b["response"].str.len().to_numpy()
        # the judge prefers the longer text in either order, so each prompt is a clean 1/0.5/0
        expected = np.where(la > lb, 1.0, np.where(la == lb, 0.5, 0.0))
        assert c["win_rate"] == pytest.approx(expected.mean())
        assert c["n"] == 4 and c["wins"] == int((expected > 0.5).sum())
        assert c["win_rate_ci"][0] <= c["win_rate"] <= c["win_rate_ci"][1]
        assert 0.0 <= c["lc_win_rate_ci"][0] <= c["lc_win_rate_ci"][1] <= 1.0
        assert c["mean_length_diff"] == pytest.approx((a["num_tokens"] - b["num_tokens"]).mean())


def test_eval_reuses_cached_responses_and_runs_from_the_cli(evaluated, capsys):
    rd, result = evaluated

    def must_not_generate(prompts, model_uri):
        raise AssertionError(f"regenerated {model_uri} although its responses are cached")

    again = evaluate_run(rd.uri, generate_fn=must_not_generate)
    assert again["comparisons"] == result["comparisons"]
    assert main(["eval", rd.uri, "--json", "eval.compare_to_base=false"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c["kind"] for c in printed["comparisons"]] == ["vs_previous", "vs_previous"]


def test_a_recommitted_model_is_not_judged_on_stale_responses(evaluated):
    rd, _ = evaluated
    marker = rd.path("models", "iter_002", "_COMMITTED")
    original = rd.fs.cat_file(marker)
    asked = []

    def record(prompts, model_uri):
        asked.append(model_uri)
        raise RuntimeError("stop here")

    try:
        rd.fs.pipe_file(marker, b'{"manifest_sha256": "another-commit"}')
        with pytest.raises(RuntimeError, match="stop here"):
            evaluate_run(rd.uri, generate_fn=record)
    finally:
        rd.fs.pipe_file(marker, original)
    assert asked == [rd.model_uri(2)]  # iter_000 and iter_001 came from the cache


def test_eval_refuses_a_run_with_no_committed_model(tmp_path):
    from aipo_ray.config import RunConfig
    from aipo_ray.storage import RunDir

    cfg = RunConfig.model_validate({"model": {"path": "builtin:smollm2-135m-instruct"}})
    rd = RunDir(str(tmp_path / "run"))
    rd.write_json("run.json", {"config": cfg.to_public_dict()})
    rd.write_json("models/iter_000/pointer.json", {"path": "x"})
    with pytest.raises(ValueError, match="nothing to compare yet"):
        evaluate_run(rd.uri)


def test_heldout_prompts_exclude_trained_ones_and_say_when_none_are_left(tmp_path):
    from aipo_ray.config import RunConfig
    from aipo_ray.report.evaluate import heldout_prompts
    from aipo_ray.storage import RunDir, write_success

    prompts = tmp_path / "seed.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = RunConfig.model_validate({"model": {"path": "m"}, "eval": {"num_prompts": 3, "seed": 1},
                                    "prompts": {"sources": [{"path": str(prompts)}]}})
    rd = RunDir(str(tmp_path / "run"))
    frame, source = heldout_prompts(cfg, rd)  # nothing trained yet: any 3 of the 8
    assert len(frame) == 3 and source == "seed prompts not used in training"
    assert heldout_prompts(cfg, rd)[0].equals(frame)  # seeded: the same sample every time
    trained = pd.DataFrame({"prompt_id": [make_prompt_id(p) for p in PROMPTS[:6]],
                            "prompt": PROMPTS[:6], "chosen": "a", "rejected": "b",
                            "chosen_score": 1.0, "rejected_score": 0.0})
    rd.write_stage_table(1, "pairs", pa.Table.from_pandas(trained, preserve_index=False))
    write_success(rd.fs, rd.stage_path(1, "pairs"), {"rows_out": 6})
    frame, _ = heldout_prompts(cfg, rd)
    assert sorted(frame["prompt"]) == sorted(PROMPTS[6:])
    trained = trained.assign(prompt_id=[make_prompt_id(p) for p in PROMPTS[2:]],
                             prompt=PROMPTS[2:])
    rd.write_stage_table(2, "pairs", pa.Table.from_pandas(trained, preserve_index=False))
    write_success(rd.fs, rd.stage_path(2, "pairs"), {"rows_out": 6})
    with pytest.raises(ValueError, match=r"no held-out prompts.*set eval\.prompts"):
        heldout_prompts(cfg, rd)
