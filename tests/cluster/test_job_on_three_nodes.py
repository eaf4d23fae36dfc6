"""`ray job submit --working-dir .` of a 2-iteration run on a three-node cluster, run dir on S3.

The base model, the prompts and the run directory live on the local S3 server; credentials reach
the job only through its runtime_env (AWS_* variables). Where each actor ran is read back from
Ray's state API: generation, ranking and reference replicas and the Ray Train workers each ran on
both worker nodes (two 1.5-CPU members fit only one per node), so every one of them opened its
model and its input from storage, not from a path of the driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import upload_checkpoint, verify_checkpoint
from tests.e2e.conftest import PROMPTS
from tests.fixtures.multinode import REPO

pytestmark = pytest.mark.cluster

CONFIG = "tests/cluster/three_nodes.yaml"
# The three pools are Ray Data actors of one class; three_nodes.yaml sizes them apart.
POOL_CPUS = {1.5: "generation", 1.6: "ranking", 1.7: "reference"}


def _submit(cluster, submission_id: str, env_vars: dict[str, str], *args: str):
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
           "--submission-id", submission_id, "--runtime-env-json",
           json.dumps({"env_vars": env_vars}), "--",
           "python", "pipelines/run_iterative.py", "--config", CONFIG, *args]
    env = dict(__import__("os").environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    # The dashboard answers before the head's job agent registers ("No available agent").
    for _ in range(30):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500,
                                cwd=REPO)
        if "No available agent" not in result.stdout + result.stderr:
            return result
        time.sleep(2)
    return result


def _job_actors(cluster, job_id: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=cluster.dashboard, filters=[("job_id", "=", job_id)], detail=True,
                       limit=10_000, raise_on_missing_output=False)


def _kind(actor) -> str:
    if actor.class_name == "RayTrainWorker":
        return "training"
    if "MapWorker" in actor.class_name:
        return POOL_CPUS.get(round((actor.required_resources or {}).get("CPU", 0), 1), "map")
    return actor.class_name


def _actors_by_node(cluster, actors) -> dict[str, set[str]]:
    """{actor kind: names of the nodes it ran on} for the job's actors, dead ones included."""
    names = cluster.node_names()
    where: dict[str, set[str]] = defaultdict(set)
    for a in actors:
        where[_kind(a)].add(names.get(a.node_id, "?"))
    return dict(where)


def test_job_submit_runs_two_iterations_on_s3_across_three_nodes(
    healthy_cluster, s3_server, tiny_llama_path, tmp_path
):
    storage = s3_server.storage_config()
    root = s3_server.fresh_prefix("cluster")
    base = f"{root}/base-model"
    upload_checkpoint(tiny_llama_path, base, storage)
    prompts = f"{root}/prompts.jsonl"
    fs = RunDir(root, storage).fs
    fs.pipe_file(prompts.removeprefix("s3://"),
                 "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS).encode())
    run_dir = f"{root}/run"
    env_vars = {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                # A pool starts work once one actor is up; a short stage (6 prompts) could end
                # before its second actor is placed. Waiting for the whole pool makes "both
                # nodes" a property of placement, not of timing.
                "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"}
    submission_id = f"aipo-three-nodes-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()

    result = _submit(healthy_cluster, submission_id, env_vars, f"run_dir={run_dir}",
                     f"model.path={base}", f"prompts.sources.0.path={prompts}",
                     f"storage.local_cache_dir={tmp_path / 'cache'}")

    log = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    assert "succeeded" in result.stdout, log
    print(f"job: {time.monotonic() - started:.0f}s")
    rd = RunDir(run_dir, storage)
    assert rd.latest_model() == "iter_002"
    for i in (1, 2):
        verify_checkpoint(rd.model_uri(i), storage)
        assert rd.stage_success(i, "train")["rows_in"] > 0

    from ray.job_submission import JobSubmissionClient

    job_id = JobSubmissionClient(healthy_cluster.dashboard).get_job_info(submission_id).job_id
    actors = _job_actors(healthy_cluster, job_id)
    where = _actors_by_node(healthy_cluster, actors)
    names = healthy_cluster.node_names()
    for a in actors:
        print(_kind(a), names.get(a.node_id), a.state, a.num_restarts, str(a.death_cause)[:300])
    print("actors by node:", where)
    for kind in ("generation", "ranking", "reference", "training"):
        assert where.get(kind) == {"node_a", "node_b"}, (kind, where)
