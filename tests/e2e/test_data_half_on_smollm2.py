"""Issue 4: prompts → self-instruct → generate → rank → pairs → ref_logps on SmolLM2, for real,
on a local Ray cluster, each stage through run_stage with its contract checked."""

import json

import pytest

from aipo_ray.config import build_config
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.driver import prepare_run_dir
from aipo_ray.pipeline.stages.generate import GenerateStage
from aipo_ray.pipeline.stages.pairs import PairsStage
from aipo_ray.pipeline.stages.prompts import PromptsStage
from aipo_ray.pipeline.stages.rank import RankStage
from aipo_ray.pipeline.stages.ref_logps import RefLogpsStage
from aipo_ray.pipeline.stages.self_instruct import SelfInstructStage
from aipo_ray.storage import SCHEMAS, read_rejected
from aipo_ray.storage.tables import SUCCESS

SEEDS = [
    "Explain why the sky is blue.", "Write a haiku about autumn leaves.",
    "Give three tips for learning a new language.", "What is the capital of France?",
    "Describe how a bicycle works.", "Suggest a name for a friendly robot.",
    "Summarise the plot of Romeo and Juliet in two sentences.", "How do I boil an egg?",
]
N = 3


@pytest.mark.slow  # ~2 min on SmolLM2
def test_data_half_of_an_iteration_on_smollm2(tmp_path, smollm2_path, ray_cluster):
    source = tmp_path / "seeds.jsonl"
    lines = [json.dumps({"prompt": p}) for p in SEEDS]
    lines.insert(3, '{"prompt": "unterminated')          # seeded bad row: malformed JSON
    lines.insert(6, json.dumps({"prompt": "   "}))        # seeded bad row: empty prompt
    source.write_text("\n".join(lines) + "\n")
    config = build_config({
        "name": "data-half", "run_dir": str(tmp_path / "run"), "max_bad_row_fraction": 0.9,
        "model": {"path": smollm2_path},
        "prompts": {"sources": [{"path": str(source)}]},
        "self_instruct": {"num_instructions": 3, "num_few_shot": 3, "oversample": 3.0,
                          "max_tokens": 32},
        "generation": {"backend": "hf", "num_candidates": N, "max_tokens": 24, "batch_size": 4},
        "ranking": {"backend": "llm_judge", "model": "policy", "mode": "tournament",
                    "batch_size": 4},
        "pairs": {"drop_truncated": False},
        "training": {"max_prompt_length": 256, "max_response_length": 64},
        "ray": {"num_cpus": 2},
    })
    ctx = StageContext(config=config, run_dir=prepare_run_dir(config), iteration=1)
    stages = [SelfInstructStage(), PromptsStage.for_config(config), GenerateStage(), RankStage(),
              PairsStage(), RefLogpsStage()]
    records = {s.name: run_stage(s, ctx) for s in stages}

    # Seeded bad source rows are kept, with their reasons and line numbers.
    rejected = read_rejected(ctx.run_dir.fs, ctx.stage_path("self_instruct")).to_pylist()
    reasons = {r["row"]: r["reason"] for r in rejected}
    assert reasons[4].startswith("malformed_json") and reasons[7].startswith("empty")
    assert records["self_instruct"]["rejected_total"] == 2

    tables = {name: ctx.read(name) for name in ("prompts", "generations", "rankings", "pairs",
                                                  "ref_logps")}
    for name, table in tables.items():
        assert set(SCHEMAS[name].names) <= set(table.column_names), name
        assert ctx.run_dir.fs.exists(f"{ctx.stage_path(name)}/{SUCCESS}")
    prompt_ids = set(tables["prompts"]["prompt_id"].to_pylist())
    assert 1 <= len(prompt_ids) <= 3 and records["prompts"]["rows_out"] == len(prompt_ids)
    generations = tables["generations"].to_pylist()
    assert sorted((g["prompt_id"], g["candidate_idx"]) for g in generations) == sorted(
        (p, i) for p in prompt_ids for i in range(N))
    assert {r["prompt_id"] for r in tables["rankings"].to_pylist()} == prompt_ids
    for r in tables["rankings"].to_pylist():
        assert len(r["scores"]) == N and r["best_idx"] != r["worst_idx"]
    pairs = tables["pairs"].to_pylist()
    assert records["pairs"]["rows_out"] + records["pairs"]["rejected_total"] == len(prompt_ids)
    assert all(p["chosen"] != p["rejected"] and p["chosen_score"] >= p["rejected_score"]
               for p in pairs)
    ref = {r["prompt_id"]: r for r in tables["ref_logps"].to_pylist()}
    assert ref.keys() == {p["prompt_id"] for p in pairs}
    assert all(r["ref_chosen_logp"] < 0 and r["chosen_len"] > 0 for r in ref.values())

    # Re-running finished stages does nothing.
    assert all(run_stage(s, ctx).get("skipped") for s in stages)

    # A half-written generation stage (no _SUCCESS, a stray duplicate part) is redone cleanly.
    fs, gen_dir = ctx.run_dir.fs, ctx.stage_path("generations")
    fs.rm(f"{gen_dir}/{SUCCESS}")
    fs.copy(f"{gen_dir}/part-00000.parquet", f"{gen_dir}/part-00009.parquet")
    record = run_stage(GenerateStage(), ctx)
    assert not record.get("skipped")
    again = ctx.read("generations").to_pylist()
    keys = [(g["prompt_id"], g["candidate_idx"]) for g in again]
    assert len(keys) == len(set(keys)) == len(prompt_ids) * N
