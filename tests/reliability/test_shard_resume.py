"""A driver killed between shards of a sharded stage resumes with only the unfinished shards.

The driver runs as a subprocess with AIPO_TEST_PAUSE_AFTER_SHARD=generations:1 (6 prompts, 2 per
shard: it stops once shards 0 and 1 are committed); the test SIGKILLs its process group, leaves a
half-written part of shard 2 behind as a crash inside the write would, and resumes in-process.
"""

from __future__ import annotations

import hashlib

import pytest
import yaml

from aipo_ray.pipeline.driver import default_stages, resume
from aipo_ray.pipeline.sharded import PAUSE_AFTER_SHARD_ENV
from aipo_ray.storage import RunDir
from tests.e2e.conftest import tiny_run_config
from tests.e2e.processes import kill_group, start_driver, wait_for

pytestmark = pytest.mark.reliability

N = 3


def shard_files(directory) -> dict[str, tuple[int, str]]:
    """Every part and marker: (mtime in ns, sha256 of the bytes)."""
    files = sorted(directory.glob("part-*.parquet")) + sorted(directory.glob("_shards/*.json"))
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns,
                                            hashlib.sha256(p.read_bytes()).hexdigest())
            for p in files}


@pytest.mark.reliability_slow  # ~1 min
def test_driver_killed_between_generation_shards_redoes_only_the_unfinished_shard(
    tmp_path, tiny_llama_path, ray_cluster
):
    run_dir = tmp_path / "run"
    config = tiny_run_config(tiny_llama_path, str(run_dir), tmp_path / "prompts.jsonl",
                             iterations=1)
    config["generation"].update(max_tokens=4, batch_size=2)
    config["storage"] = {"shard_size": 2}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    log = tmp_path / "driver.log"
    driver = start_driver(path, log, env={PAUSE_AFTER_SHARD_ENV: "generations:1"})
    try:
        wait_for(lambda: "paused after shard 1" in log.read_text(errors="replace"), driver,
                 timeout_s=600, log=log, what="the driver to commit generation shards 0 and 1")
    finally:
        kill_group(driver)

    gens = run_dir / "iter_001" / "generations"
    committed = shard_files(gens)
    assert sorted(committed) == ["_shards/00000.json", "_shards/00001.json",
                                 "part-00000.parquet", "part-00001.parquet"]
    assert not (gens / "_SUCCESS").exists()
    (gens / "part-00002.parquet").write_bytes(b"PAR1 half-written")  # a crash inside the write

    summary = resume(str(run_dir), stages=lambda cfg, i: [
        s for s in default_stages(cfg, i) if s.name in ("prompts", "generations")])
    record = summary.iterations[0]["stages"]["generations"]
    assert not record.get("skipped")
    assert record["extra"]["shards_redone"] == 1  # shard 2 only

    after = shard_files(gens)
    assert {k: after[k] for k in committed} == committed  # shards 0 and 1 untouched
    assert sorted(after) == sorted([*committed, "_shards/00002.json", "part-00002.parquet"])

    rd = RunDir(str(run_dir))
    prompts = rd.read_stage_table(1, "prompts")["prompt_id"].to_pylist()
    table = rd.read_stage_table(1, "generations")
    keys = sorted(zip(table["prompt_id"].to_pylist(), table["candidate_idx"].to_pylist(),
                      strict=True))
    assert len(prompts) == 6
    assert keys == sorted((p, j) for p in prompts for j in range(N))  # each exactly once
    assert (record["rows_in"], record["rows_out"]) == (6, 6 * N)
