"""GenerateStage through the real stage runner on a local run directory with the hf backend."""

import pyarrow as pa
import pyarrow.parquet as pq

from aipo_ray.config import RunConfig
from aipo_ray.models import POINTER
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stages.generate import GenerateStage
from aipo_ray.storage import RunDir, make_prompt_id, write_success
from aipo_ray.storage.schemas import GENERATIONS, PROMPTS

PROMPTS_TEXT = ["Name a color.", "Explain tides in one line.", "hi"]


def make_run(tmp_path, model_path, shard_size=1024, **generation):
    root = str(tmp_path / "run")
    config = RunConfig.model_validate({
        "name": "gen", "run_dir": root, "model": {"path": model_path},
        "storage": {"shard_size": shard_size},
        "generation": {"backend": "hf", "num_candidates": 2, "max_tokens": 4, "batch_size": 2,
                       "temperature": 1.0, **generation},
    })
    rd = RunDir(root)
    rd.write_json(f"models/iter_000/{POINTER}", {"path": model_path})
    prompts = pa.table({"prompt_id": [make_prompt_id(p) for p in PROMPTS_TEXT],
                        "prompt": PROMPTS_TEXT, "source": ["test"] * 3,
                        "iteration": pa.array([1, 1, 1], pa.int32())}, schema=PROMPTS)
    rd.write_stage_table(1, "prompts", prompts)
    write_success(rd.fs, rd.stage_path(1, "prompts"), {"fingerprint": "hand-written"})
    return StageContext(config=config, run_dir=rd, iteration=1)


def test_generate_stage_writes_sorted_parts_and_counts_flags(tmp_path, ray_cluster,
                                                             tiny_llama_path):
    # Two prompts per shard: three prompts make two part files, none splitting a prompt.
    ctx = make_run(tmp_path, tiny_llama_path, shard_size=2)
    record = run_stage(GenerateStage(), ctx)

    table = ctx.read("generations")
    assert table.schema == GENERATIONS
    assert (record["rows_in"], record["rows_out"], table.num_rows) == (3, 6, 6)
    keys = list(zip(table["prompt_id"].to_pylist(), table["candidate_idx"].to_pylist(), strict=True))
    assert keys == sorted((make_prompt_id(p), i) for p in PROMPTS_TEXT for i in range(2))
    parts = sorted((tmp_path / "run" / "iter_001" / "generations").glob("part-*.parquet"))
    assert [pq.read_table(p).num_rows for p in parts] == [4, 2]

    rows = table.to_pylist()
    truncated = sum(r["finish_reason"] == "length" for r in rows)
    empty = sum(not r["response"].strip() for r in rows)
    assert record["extra"]["truncated"] == truncated and record["extra"]["empty"] == empty
    assert record["extra"]["num_candidates"] == 2 and record["extra"]["backend"] == "hf"
    # A random model almost never says EOS within 4 tokens: these rows are flagged, not dropped.
    assert truncated >= 4

    again = run_stage(GenerateStage(), ctx)
    assert again["skipped"] is True
    assert ctx.read("generations").equals(table)
