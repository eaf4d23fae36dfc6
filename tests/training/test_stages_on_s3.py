"""ref_logps → train → commit as pipeline stages on a run directory in real S3 (weed mini)."""

import json

import pytest
from transformers import AutoModelForCausalLM

from aipo_ray.config import LossConfig
from aipo_ray.models import resolve_model_path
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.driver import prepare_run_dir
from aipo_ray.pipeline.stages.commit import CommitStage
from aipo_ray.pipeline.stages.ref_logps import RefLogpsStage
from aipo_ray.pipeline.stages.train import TrainStage
from aipo_ray.storage import write_success
from aipo_ray.storage.checkpoint import verify_checkpoint
from aipo_ray.training.trainer import needs_reference

from .test_trainer_on_cpu import make_config, make_pairs


def test_needs_reference_follows_the_loss(tiny_llama_path):
    config = make_config(tiny_llama_path)
    assert needs_reference(config)  # dpo
    config.loss = LossConfig(name="simpo")
    assert not needs_reference(config)


@pytest.mark.slow  # ~90 s on 2 busy cores: Ray Data actor, Ray Train group, S3 round trips
def test_ref_train_commit_stages_on_s3(ray_cluster, s3_storage, tiny_llama_path):
    storage, prefix = s3_storage
    config = make_config(tiny_llama_path, num_workers=1, global_batch_size=5, micro_batch_size=5)
    config = config.model_copy(update={"run_dir": prefix, "storage": storage})
    run_dir = prepare_run_dir(config)  # models/iter_000 points at the tiny Llama
    ctx = StageContext(config=config, run_dir=run_dir, iteration=1)
    ctx.write("pairs", make_pairs())
    write_success(run_dir.fs, ctx.stage_path("pairs"), {"fingerprint": "pairs-v1"})

    ref_record = run_stage(RefLogpsStage(), ctx)
    ref = ctx.read("ref_logps")
    assert ref_record["rows_out"] == ref.num_rows == 5
    # Sharded by prompt: in prompt_id order, each pair exactly once (train joins by prompt_id).
    assert ref.column("prompt_id").to_pylist() == sorted(make_pairs().column("prompt_id").to_pylist())

    train_record = run_stage(TrainStage(), ctx)
    assert train_record["extra"]["steps"] == 1
    metrics = run_dir.fs.cat_file(run_dir.iteration_path(1, "train", "metrics.jsonl")).decode()
    assert [json.loads(ln)["step"] for ln in metrics.splitlines()] == [1]

    commit_record = run_stage(CommitStage(), ctx)
    assert commit_record["extra"]["model_uri"] == ctx.output_model_uri == f"{prefix}/models/iter_001"
    assert run_dir.latest_model() == "iter_001"
    verify_checkpoint(ctx.output_model_uri, storage)
    local = resolve_model_path(ctx.output_model_uri, storage)  # the next iteration's policy
    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 2
    assert run_dir.exists("models/iter_000/pointer.json")  # the previous model stays
    assert run_stage(CommitStage(), ctx)["skipped"]  # done stages are not redone
