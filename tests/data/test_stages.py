"""The prompts and pairs stages through the real stage runner on a local run directory."""

import json

import pyarrow as pa
import pytest

from aipo_ray.config import RunConfig
from aipo_ray.models import POINTER
from aipo_ray.pipeline import Stage, StageContext, StageError, StageResult, run_stage
from aipo_ray.pipeline.stages.pairs import PairsStage
from aipo_ray.pipeline.stages.prompts import PromptsStage, iteration_slice
from aipo_ray.storage import RunDir, make_prompt_id, read_rejected
from aipo_ray.storage.schemas import PROMPTS, SELF_INSTRUCT


class TableStage(Stage):
    """Stands in for an upstream stage: writes a hand-made table (so its _SUCCESS is real)."""

    def __init__(self, name, table):
        self.name, self.table, self.inputs = name, table, ()

    def run(self, ctx):
        ctx.write(self.name, self.table)
        return StageResult(rows_in=self.table.num_rows, rows_out=self.table.num_rows)


def make_ctx(tmp_path, iteration=1, model_path="unused", **overrides):
    root = str(tmp_path / "run")
    config = RunConfig.model_validate({"name": "t", "run_dir": root, "model": {"path": model_path},
                                       **overrides})
    rd = RunDir(root)
    # θ_{i-1} of this iteration, as a pointer (a real run commits a checkpoint there).
    rd.write_json(f"models/{rd.model_name(iteration - 1)}/{POINTER}", {"path": model_path})
    return StageContext(config=config, run_dir=rd, iteration=iteration)


def rejected_of(ctx, stage):
    return read_rejected(ctx.run_dir.fs, ctx.stage_path(stage)).to_pylist()


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_fixed_pool_prompts_reject_bad_rows_and_skip_when_done(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Explain tides."}, "{broken", {"prompt": ""}, {"prompt": "Explain tides."},
        {"prompt": "Name a planet."}, {"prompt": "Define entropy."}])
    ctx = make_ctx(tmp_path, prompts={"sources": [{"path": src}]},
                   self_instruct={"enabled": False})
    stage = PromptsStage(self_instruct=False)
    assert stage.inputs == ()
    record = run_stage(stage, ctx)
    assert (record["rows_in"], record["rows_out"]) == (6, 3)
    assert record["rejected"] == {"malformed_json": 1, "empty_prompt": 1, "duplicate": 1}
    table = ctx.read("prompts")
    assert table.schema == PROMPTS
    assert table.column("prompt").to_pylist() == ["Explain tides.", "Name a planet.",
                                                  "Define entropy."]
    assert set(table.column("iteration").to_pylist()) == {1}
    rejected = rejected_of(ctx, "prompts")
    assert sorted((r["row"], r["reason"].split(":")[0], r["source"]) for r in rejected) == [
        (2, "malformed_json", src), (3, "empty_prompt", src), (4, "duplicate", src)]
    assert run_stage(stage, ctx)["skipped"] is True


def test_fixed_pool_per_iteration_slices_differ_between_iterations(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question number {i}?"} for i in range(10)])
    seen = []
    for it in (1, 2):
        ctx = make_ctx(tmp_path, iteration=it, seed=7, self_instruct={"enabled": False},
                       prompts={"sources": [{"path": src}], "per_iteration": 4})
        run_stage(PromptsStage(self_instruct=False), ctx)
        seen.append(set(ctx.read("prompts").column("prompt").to_pylist()))
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]
    assert sorted(iteration_slice(5, 3, 0, 2)) != sorted(iteration_slice(5, 3, 0, 1))
    assert len(iteration_slice(5, 3, 0, 2)) == 3  # wraps around the end of the permutation


def self_instruct_table(texts, iteration, truncated=()):
    rows = [dict(prompt_id=make_prompt_id(t), prompt=t, source="self_instruct", iteration=iteration,
                 request_id=f"si-{iteration:03d}-{i:06d}", response=t,
                 finish_reason="length" if i in truncated else "stop", truncated=i in truncated)
            for i, t in enumerate(texts)]
    return pa.Table.from_pylist(rows, schema=SELF_INSTRUCT)


def run_self_instruct_iteration(tmp_path, iteration, texts, smollm2_path, **si):
    ctx = make_ctx(tmp_path, iteration=iteration, model_path=smollm2_path,
                   self_instruct={"num_instructions": 3, **si})
    run_stage(TableStage("self_instruct", self_instruct_table(texts, iteration)), ctx)
    return ctx, run_stage(PromptsStage(), ctx)


def test_self_instruct_prompts_filter_count_reasons_and_grow_the_pool(tmp_path, smollm2_path):
    first = [
        "Describe the life cycle of a butterfly.",
        "I'm sorry, but I cannot write an instruction.",
        "Draw a picture of a sunset over the sea.",
        "Why is the sky blue during the day but red at dusk?",  # ROUGE-L 0.92 with a seed
        "List five uses of baking soda around the house.",
        "Name three famous painters of the Renaissance.",
        "Summarise the causes of the French Revolution.",  # surplus: P = 3 already kept
    ]
    ctx, record = run_self_instruct_iteration(tmp_path, 1, first, smollm2_path)
    assert (record["rows_in"], record["rows_out"]) == (7, 3)
    assert record["rejected"] == {"refusal": 1, "blocked_keyword": 1, "near_duplicate_pool": 1}
    assert record["extra"]["surplus"] == 1 and record["extra"]["wanted"] == 3
    kept = ctx.read("prompts")
    assert kept.column("prompt").to_pylist() == [first[0], first[4], first[5]]
    assert set(kept.column("source").to_pylist()) == {"self_instruct"}
    rejected = rejected_of(ctx, "prompts")
    assert {r["row"]: r["reason"].split(":")[0] for r in rejected} == {
        1: "refusal", 2: "blocked_keyword", 3: "near_duplicate_pool"}
    assert all(r["prompt_id"] == make_prompt_id(first[r["row"]]) for r in rejected)

    # Iteration 2's pool holds iteration 1's prompts: repeating one is a pool duplicate.
    second = ["Describe the life cycle of a butterfly.", "Explain how a rainbow forms after rain.",
              "Give two tips for writing a clear email.", "Suggest a name for a bakery by the sea."]
    ctx2, record2 = run_self_instruct_iteration(tmp_path, 2, second, smollm2_path)
    assert record2["rejected"] == {"duplicate_pool": 1}
    assert ctx2.read("prompts").column("prompt").to_pylist() == second[1:]


def test_token_bounds_use_the_policy_tokenizer(tmp_path, smollm2_path):
    texts = ["Explain photosynthesis to a child in simple words.", "Name three rivers in Europe."]
    _, record = run_self_instruct_iteration(
        tmp_path, 1, texts, smollm2_path,
        filters={"max_tokens": 8, "min_words": 2})
    # 9 tokens under SmolLM2's tokenizer vs 6: only the first is over the bound.
    assert record["rejected"] == {"too_many_tokens": 1} and record["rows_out"] == 1


def test_a_stage_rejecting_most_rows_fails_and_leaves_its_reasons(tmp_path, smollm2_path):
    texts = ["I'm sorry, I can't do that.", "As an AI, I cannot help.", "Draw a map of Spain.",
             "Name three rivers in Europe."]
    with pytest.raises(StageError, match=r"rejected 3 of 4 rows.*refusal: 2"):
        run_self_instruct_iteration(tmp_path, 1, texts, smollm2_path)
    ctx = make_ctx(tmp_path, model_path=smollm2_path)
    assert ctx.run_dir.stage_success(1, "prompts") is None
    assert len(rejected_of(ctx, "prompts")) == 3


def test_pairs_stage_writes_pairs_and_rejected_prompts(tmp_path):
    ctx = make_ctx(tmp_path, pairs={"min_score_gap": 0.5, "max_pairs": 1})
    gens, ranks = [], []
    cases = {"a": [1.0, 0.0, 0.2], "b": [0.3, 0.2, 0.1], "c": [2.0, 0.0, 1.0], "d": [1.0, 0.0, 0.1]}
    for pid, scores in cases.items():
        for j in range(3):
            gens.append(dict(prompt_id=pid, prompt=f"q {pid}", candidate_idx=j,
                             response=f"answer {j} " * (j + 1), num_tokens=2 * (j + 1),
                             finish_reason="stop"))
        ranks.append(dict(prompt_id=pid, scores=scores, best_idx=scores.index(max(scores)),
                          worst_idx=scores.index(min(scores))))
    run_stage(TableStage("generations", pa.Table.from_pylist(gens)), ctx)
    run_stage(TableStage("rankings", pa.Table.from_pylist(ranks)), ctx)
    record = run_stage(PairsStage(), ctx)
    assert (record["rows_in"], record["rows_out"]) == (4, 1)
    assert record["rejected"] == {"small_gap": 1}
    assert record["extra"]["surplus"] == 2
    pairs = ctx.read("pairs").to_pylist()
    assert [(p["prompt_id"], p["chosen_num_tokens"], p["rejected_num_tokens"]) for p in pairs] == [
        ("a", 2, 4)]
    assert [(r["prompt_id"], r["row"]) for r in rejected_of(ctx, "pairs")] == [("b", 1)]
