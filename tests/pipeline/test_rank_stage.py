"""RankStage groups N candidates per prompt, ranks them in Ray Data actors, writes the contract."""

import pyarrow as pa

from aipo_ray.config import load_config
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stages.rank import RankStage, group_candidates
from aipo_ray.storage import RunDir, make_prompt_id, write_success


def shortest_wins(prompt, candidates):
    return [-float(len(c)) for c in candidates]


def generations(rows):
    return pa.table({
        "prompt_id": [make_prompt_id(p) for p, _, _ in rows], "prompt": [p for p, _, _ in rows],
        "candidate_idx": [i for _, i, _ in rows], "response": [r for _, _, r in rows],
        "num_tokens": [len(r.split()) for _, _, r in rows], "finish_reason": ["stop"] * len(rows),
    })


def test_group_candidates_orders_by_candidate_idx():
    table = generations([("p", 2, "c"), ("p", 0, "a"), ("q", 0, "x"), ("p", 1, "b"), ("q", 1, "y")])
    grouped = group_candidates(table).to_pylist()
    by_prompt = {r["prompt"]: r["candidates"] for r in grouped}
    assert by_prompt == {"p": ["a", "b", "c"], "q": ["x", "y"]}


def test_rank_stage_with_a_python_function_picks_best_and_worst(tmp_path, ray_cluster):
    config = load_config(None, ["model.path=unused", f"run_dir={tmp_path}", "ranking.batch_size=1"])
    ctx = StageContext(config=config, run_dir=RunDir(str(tmp_path)), iteration=1)
    rows = [("why?", 0, "a longer answer here"), ("why?", 1, "short"), ("why?", 2, "mid size"),
            ("how?", 0, "x"), ("how?", 1, "the longest of them all"), ("how?", 2, "medium one")]
    ctx.write("generations", generations(rows))
    write_success(ctx.run_dir.fs, ctx.stage_path("generations"), {"fingerprint": "g"})

    record = run_stage(RankStage(ranker=shortest_wins), ctx)

    table = {r["prompt_id"]: r for r in ctx.read("rankings").to_pylist()}
    why, how = table[make_prompt_id("why?")], table[make_prompt_id("how?")]
    assert (why["best_idx"], why["worst_idx"]) == (1, 0)
    assert (how["best_idx"], how["worst_idx"]) == (0, 1)
    assert why["scores"] == [-20.0, -5.0, -8.0]
    assert record["rows_in"] == record["rows_out"] == 2
    assert record["extra"]["backend"] == "callable"
