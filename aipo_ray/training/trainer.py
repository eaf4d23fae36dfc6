"""Train θ_t → θ_{t+1} on one iteration's pairs with Ray Train's TorchTrainer (the driver side)."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from typing import Any

import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.losses import build_loss

from .loop import train_loop_per_worker
from .plan import BatchPlan, join_reference

log = logging.getLogger(__name__)


def needs_reference(config: RunConfig) -> bool:
    """Whether the configured loss reads reference log-probs (SimPO does not: no ref_logps stage)."""
    return build_loss(config.loss.name, **config.loss.resolved_hparams()).requires_reference


def batch_plan(config: RunConfig, num_pairs: int) -> BatchPlan:
    t = config.training
    return BatchPlan(num_pairs, t.global_batch_size, t.micro_batch_size, t.num_workers,
                     t.num_epochs, t.seed)


def _scaling_config(config: RunConfig):
    from ray.train import ScalingConfig

    t = config.training
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    return ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                         resources_per_worker=resources)


def _ray_run_config(config: RunConfig, run_name: str, storage_path: str | None):
    from ray.train import CheckpointConfig, FailureConfig
    from ray.train import RunConfig as RayRunConfig

    path = storage_path or os.path.join(
        os.path.expanduser(config.storage.local_cache_dir), "ray_train")
    path, filesystem = train_storage(path, config)
    return RayRunConfig(
        name=run_name, storage_path=path, storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=config.training.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
    )


def train_storage(uri: str, config: RunConfig):
    """(path, pyarrow filesystem or None) for Ray Train's `storage_path` at `uri`.

    An s3:// URI goes through the run's own s3fs filesystem (its endpoint, credentials and
    retries), wrapped for pyarrow: every worker, on any node, writes its checkpoint shards there
    itself. Ray Train's own S3 resolution would read only the standard AWS environment.
    """
    if "://" not in uri:
        return uri, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from aipo_ray.storage import filesystem

    fs, path = filesystem(uri, config.storage)
    return path, PyFileSystem(FSSpecHandler(fs))


def train_policy(
    config: RunConfig, pairs: pa.Table, ref_logps: pa.Table | None, policy_uri: str,
    output_uri: str, metrics_uri: str, *, run_name: str | None = None,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Train the policy at `policy_uri` on `pairs`; commit the result at `output_uri`.

    `output_uri` (local or s3://) receives safetensors + tokenizer with a manifest and
    `_COMMITTED`, so it can be verified and re-committed after a driver crash. `metrics_uri`
    receives one JSON line per optimizer step. Mid-epoch checkpoints for worker-failure resume
    go to `storage_path`, a path or s3:// URI every node can reach (the train stage passes
    `<run_dir>/_ray_train`; default `<storage.local_cache_dir>/ray_train`, one node only). `run_name` names the Ray Train run: a rerun with the same
    name after a crash resumes from its last checkpoint; a finished run's checkpoints are
    deleted. Returns the plan and the last step's metrics.
    """
    import ray
    from ray.train.torch import TorchConfig, TorchTrainer

    uses_reference = needs_reference(config)
    if uses_reference and ref_logps is None:
        raise ValueError(f"loss {config.loss.name!r} needs reference log-probs; run ref_logps first")
    table = join_reference(pairs, ref_logps if uses_reference else None)
    plan = batch_plan(config, table.num_rows)
    log.info("training: %s", plan.describe())
    if not ray.is_initialized():  # the driver or the entry point starts (or joins) Ray
        raise RuntimeError("train_policy needs a running Ray: call aipo_ray.runtime.init_ray first")
    ray_run = _ray_run_config(config, run_name or f"aipo-train-{uuid.uuid4().hex[:8]}", storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config, "table": ray.put(table), "policy_uri": policy_uri,
            "output_uri": output_uri, "metrics_uri": metrics_uri,
        },
        scaling_config=_scaling_config(config),
        torch_config=TorchConfig(backend="nccl" if config.training.use_gpu else "gloo"),
        run_config=ray_run,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    _drop_resume_checkpoints(config, ray_run)
    return {"plan": plan.describe(), "steps": plan.total_steps,
            "metrics": last_metrics(metrics_uri, config), "model_uri": output_uri,
            "metrics_uri": metrics_uri}


def _drop_resume_checkpoints(config: RunConfig, ray_run) -> None:
    """Delete the finished run's mid-epoch checkpoints (sharded model + optimizer: large).

    Ray Train restores a run from its storage directory by name, so leaving them would make a
    forced rerun of the stage resume a finished run instead of training afresh.
    """
    from aipo_ray.storage import filesystem, with_retries

    uri = posixpath.join(ray_run.storage_path, ray_run.name)
    if ray_run.storage_filesystem is not None:  # an s3 path without its scheme
        uri = "s3://" + uri
    fs, path = filesystem(uri, config.storage)
    if with_retries(lambda: fs.exists(path), f"stat {uri}", config.storage):
        with_retries(lambda: fs.rm(path, recursive=True), f"remove {uri}", config.storage)


def last_metrics(metrics_uri: str, config: RunConfig) -> dict[str, Any]:
    """The last line of metrics.jsonl (Ray Train 2's Result keeps metrics only with checkpoints)."""
    from aipo_ray.storage import filesystem, with_retries

    fs, path = filesystem(metrics_uri, config.storage)
    body = with_retries(lambda: fs.cat_file(path), f"read {metrics_uri}", config.storage)
    lines = [ln for ln in body.decode().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}

