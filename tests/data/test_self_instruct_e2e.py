"""Self-instruct end to end: θ_t writes instructions through the real `hf` generation backend on a
local Ray cluster, then the prompts stage filters them."""

import pytest

from aipo_ray.config import RunConfig
from aipo_ray.models import POINTER
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stages.prompts import PromptsStage
from aipo_ray.pipeline.stages.self_instruct import SelfInstructStage
from aipo_ray.storage import RunDir, make_prompt_id, read_rejected
from aipo_ray.storage.schemas import PROMPTS, SELF_INSTRUCT


def make_ctx(root, model_path, **overrides):
    config = RunConfig.model_validate({
        "name": "si", "run_dir": root, "model": {"path": model_path},
        "generation": {"backend": "hf", "batch_size": 4, "max_tokens": 32},
        # A 135M model writes plenty of junk; this test pins the accounting, not the yield.
        "max_bad_row_fraction": 1.0,
        **overrides,
    })
    rd = RunDir(root)
    rd.write_json(f"models/{rd.model_name(0)}/{POINTER}", {"path": model_path})
    return StageContext(config=config, run_dir=rd, iteration=1)


def test_self_instruct_stage_writes_one_parsed_row_per_request(tmp_path, ray_cluster,
                                                               tiny_llama_path):
    ctx = make_ctx(str(tmp_path / "run"), tiny_llama_path, self_instruct={
        "num_instructions": 3, "oversample": 2.0, "num_few_shot": 3, "max_tokens": 16})
    record = run_stage(SelfInstructStage(), ctx)
    table = ctx.read("self_instruct")
    assert table.schema == SELF_INSTRUCT
    rows = table.to_pylist()
    assert [r["request_id"] for r in rows] == [f"si-001-{i:06d}" for i in range(6)]
    assert record["rows_out"] == 6 and record["extra"]["requests"] == 6
    assert record["extra"]["pool_seeds"] == 64 and record["extra"]["pool_generated"] == 0
    for r in rows:
        assert r["finish_reason"] in ("stop", "length")
        assert r["prompt_id"] == make_prompt_id(r["prompt"])
        assert not r["truncated"] or r["finish_reason"] == "length"
    # Rerunning a finished stage does nothing; the same seed asks the same questions again.
    assert run_stage(SelfInstructStage(), ctx)["skipped"] is True
    again = run_stage(SelfInstructStage(), ctx, force=True)
    assert ctx.read("self_instruct").column("response").equals(table.column("response"))
    assert again["rows_out"] == 6


@pytest.mark.slow  # SmolLM2; the tiny-model self-instruct test stays in the default suite
def test_smollm2_self_instruct_then_filters(tmp_path, ray_cluster, smollm2_path):
    ctx = make_ctx(str(tmp_path / "run"), smollm2_path, self_instruct={
        "num_instructions": 4, "oversample": 2.0, "num_few_shot": 4, "max_tokens": 32})
    run_stage(SelfInstructStage(), ctx)
    record = run_stage(PromptsStage(), ctx)
    raw = ctx.read("self_instruct").to_pylist()
    prompts = ctx.read("prompts")
    assert prompts.schema == PROMPTS
    assert record["rows_in"] == 8 and 1 <= record["rows_out"] <= 4
    assert record["rows_out"] + record["rejected_total"] + record["extra"]["surplus"] == 8
    rejected = read_rejected(ctx.run_dir.fs, ctx.stage_path("prompts")).to_pylist()
    assert len(rejected) == record["rejected_total"]
    assert all(raw[r["row"]]["prompt_id"] == r["prompt_id"] for r in rejected)
    kept = set(prompts.column("prompt").to_pylist())
    assert kept <= {r["prompt"] for r in raw}
