"""Driver programs of the cluster tests, run as their own processes joined to the three-node cluster:

    python -m tests.cluster.drivers train|generate SPEC.json

A separate process keeps the pytest process free of a Ray connection (the default suite's tests
start their own local Ray) and lets a test kill nodes while the driver runs. Each writes
`<out>/driver.json`: its job id and the node it ran on, so the test can ask Ray's state API
where the job's actors and workers were placed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def _connect(address: str) -> dict:
    import ray

    from aipo_ray.config import RayConfig
    from aipo_ray.runtime import init_ray

    init_ray(RayConfig(address=address))
    ctx = ray.get_runtime_context()
    return {"job_id": ctx.get_job_id(), "node_id": ctx.get_node_id()}


def train(spec: dict) -> dict:
    """FSDP2 training with 2 Ray Train workers of 1.5 CPUs each, on the pairs and reference
    log-probs the test wrote (`pairs.parquet`, `ref.parquet` in `out`)."""
    from aipo_ray.training.trainer import train_policy
    from tests.training.test_trainer_on_cpu import make_config

    out = Path(spec["out"])
    config = make_config(spec["model"], cpus_per_worker=1.5, **spec["training"])
    pairs, ref = pq.read_table(out / "pairs.parquet"), pq.read_table(out / "ref.parquet")
    train_policy(config, pairs, ref, spec["model"], output_uri=str(out / "model"),
                 metrics_uri=str(out / "metrics.jsonl"), storage_path=str(out / "ray"),
                 run_name="cluster")
    return {}


def generate(spec: dict) -> dict:
    """The generate stage through the stage runner: 2 hf replicas of 1.5 CPUs, 8-prompt shards."""
    from aipo_ray.config import RunConfig
    from aipo_ray.models import POINTER
    from aipo_ray.pipeline import StageContext, run_stage
    from aipo_ray.pipeline.stages.generate import GenerateStage
    from aipo_ray.storage import RunDir, make_prompt_id, write_success
    from aipo_ray.storage.schemas import PROMPTS

    root = spec["run_dir"]
    config = RunConfig.model_validate({
        "name": "cluster-gen", "run_dir": root, "model": {"path": spec["model"]},
        "storage": {"shard_size": 8},
        "generation": {"backend": "hf", "num_candidates": 2, "max_tokens": 48, "batch_size": 1,
                       "temperature": 1.0, "num_replicas": 2, "cpus_per_replica": 1.5},
    })
    rd = RunDir(root)
    rd.write_json(f"models/iter_000/{POINTER}", {"path": spec["model"]})
    texts = spec["prompts"]
    rd.write_stage_table(1, "prompts", pa.table(
        {"prompt_id": [make_prompt_id(p) for p in texts], "prompt": texts,
         "source": ["test"] * len(texts), "iteration": pa.array([1] * len(texts), pa.int32())},
        schema=PROMPTS))
    write_success(rd.fs, rd.stage_path(1, "prompts"), {"fingerprint": "hand-written"})
    record = run_stage(GenerateStage(), StageContext(config=config, run_dir=rd, iteration=1))
    return {"rows_in": record["rows_in"], "rows_out": record["rows_out"]}


def start(what: str, spec: dict, address: str, log: Path, **tables: pa.Table) -> subprocess.Popen:
    """Start `python -m tests.cluster.drivers WHAT SPEC` against the cluster at `address`;
    `tables` are written to `<out>/<name>.parquet` for the driver to read."""
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        pq.write_table(table, out / f"{name}.parquet")
    (out / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, RAY_ADDRESS=address, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "tests.cluster.drivers", what,
                             str(out / "spec.json")], cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, out: Path, log: Path, timeout_s: float) -> dict:
    """Wait for a driver; its driver.json, or an assertion with the end of its log."""
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(
            f"driver timed out after {timeout_s}s:\n{log.read_text()[-4000:]}") from None
    assert rc == 0, f"driver exited {rc}:\n{log.read_text()[-4000:]}"
    return json.loads((out / "driver.json").read_text())


def main(what: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    info = _connect(os.environ["RAY_ADDRESS"])
    info.update({"train": train, "generate": generate}[what](spec))
    Path(spec["out"], "driver.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(*sys.argv[1:])
