"""Issue 6: two iterations into a run dir on a real local S3 server, end to end."""

import pyarrow as pa
import pytest
import ray
import torch
from safetensors.torch import load_file

from aipo_ray.config import build_config
from aipo_ray.generation import generate
from aipo_ray.models import resolve_model_path
from aipo_ray.pipeline.driver import run
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import verify_checkpoint

from .conftest import tiny_run_config


def _generations_with(model_uri, prompts: pa.Table, config) -> list[tuple]:
    ds = generate(ray.data.from_arrow(prompts.select(["prompt_id", "prompt"])), model_uri,
                  config.generation, storage=config.storage)
    rows = [r for b in ray.get(ds.to_arrow_refs()) for r in b.to_pylist()]
    return sorted((r["prompt_id"], r["candidate_idx"], r["response"]) for r in rows)


@pytest.mark.slow  # ~3 min; S3 stages and commits are also covered by tests/training/test_stages_on_s3.py
def test_two_iterations_commit_models_on_s3_and_iteration_2_samples_theta_1(
    tmp_path, s3_server, tiny_llama_path, ray_cluster
):
    bucket_uri = s3_server.fresh_prefix("e2e")
    data = tiny_run_config(tiny_llama_path, bucket_uri, tmp_path / "prompts.jsonl")
    storage = s3_server.storage_config()
    data["storage"] = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
                       for k, v in storage.model_dump().items() if v is not None}
    config = build_config(data)

    summary = run(config)

    rd = RunDir(bucket_uri, config.storage)
    assert summary.latest_model == "iter_002" == rd.latest_model()
    for i in (1, 2):
        manifest = verify_checkpoint(rd.model_uri(i), config.storage)
        assert any(f["path"].endswith(".safetensors") for f in manifest["files"])

    # Iteration 2's candidates are exactly what θ_1 samples (seeded per prompt), not θ_0.
    prompts_2 = rd.read_stage_table(2, "prompts")
    stored = sorted(
        (r["prompt_id"], r["candidate_idx"], r["response"])
        for r in rd.read_stage_table(2, "generations").to_pylist()
    )
    assert stored == _generations_with(rd.model_uri(1), prompts_2, config)
    assert stored != _generations_with(rd.model_uri(0), prompts_2, config)

    # Each iteration trained: the weights moved from θ_0 to θ_1 to θ_2.
    def weights(i):
        path = resolve_model_path(rd.model_uri(i), config.storage)
        return load_file(f"{path}/model.safetensors")

    w0 = load_file(f"{tiny_llama_path}/model.safetensors")
    w1, w2 = weights(1), weights(2)
    assert w0.keys() == w1.keys() == w2.keys()
    for a, b in ((w0, w1), (w1, w2)):
        assert any(not torch.equal(a[k], b[k]) for k in a)
    assert rd.stage_success(2, "train")["rows_in"] > 0
