"""A worker node lost (its raylet SIGKILLed) while the generate stage runs: Ray Data restarts the
lost replica on a replacement node, retries its batches, and every prompt id is generated
exactly once, with all its candidates."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from aipo_ray.storage import RunDir, make_prompt_id

from . import drivers

pytestmark = pytest.mark.cluster

PROMPTS = [f"Question {i}: name something that is {c}." for i, c in
           enumerate(["red", "round", "cold", "loud"] * 4)]
CANDIDATES = 2  # drivers.generate's num_candidates


def _generation_actors(cluster, job_id: str) -> list:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=cluster.dashboard, detail=True, limit=10_000,
                                   filters=[("job_id", "=", job_id)],
                                   raise_on_missing_output=False)
            if "MapWorker" in a.class_name]


def test_worker_node_lost_during_generation_generates_every_prompt_once(
    healthy_cluster, tiny_llama_path, tmp_path
):
    cluster = healthy_cluster
    run_dir = tmp_path / "run"
    out, log = tmp_path / "out", tmp_path / "driver.log"
    spec = {"out": str(out), "model": tiny_llama_path, "run_dir": str(run_dir),
            "prompts": PROMPTS}
    lost = cluster.alive_nodes()["node_a"]
    proc = drivers.start("generate", spec, cluster.address, log)

    # 16 prompts in 8-prompt shards: kill node_a once the first shard is committed, so the
    # stage is mid-way with both replicas busy.
    shards = run_dir / "iter_001" / "generations" / "_shards"
    deadline = time.monotonic() + 600
    while not (shards.exists() and any(shards.iterdir())):
        assert proc.poll() is None, f"driver ended before a shard:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no shard committed in 600 s"
        time.sleep(0.1)
    assert not (run_dir / "iter_001" / "generations" / "_SUCCESS").exists()
    cluster.kill_raylet("node_a")
    cluster.wait_dead("node_a", lost)
    cluster.restart("node_a")
    info = drivers.finish(proc, out, log, 900)

    assert (info["rows_in"], info["rows_out"]) == (len(PROMPTS), len(PROMPTS) * CANDIDATES)
    rows = RunDir(str(run_dir)).read_stage_table(1, "generations").to_pylist()
    counts = Counter((r["prompt_id"], r["candidate_idx"]) for r in rows)
    expected = {(make_prompt_id(p), i) for p in PROMPTS for i in range(CANDIDATES)}
    assert set(counts) == expected and set(counts.values()) == {1}
    nodes = {a.node_id for a in _generation_actors(cluster, info["job_id"])}
    assert lost in nodes, "no generation replica ran on the lost node"
