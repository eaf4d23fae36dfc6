"""Issue 6: SIGKILL the driver after iteration 1's commit and mid-iteration 2, then resume."""

import os

import pytest
import yaml

from aipo_ray.pipeline.driver import resume
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import verify_checkpoint

from .conftest import tiny_run_config
from .processes import kill_group, start_driver, wait_for

ITERATION_1_STAGES = ("prompts", "generations", "rankings", "pairs", "ref_logps", "train",
                      "commit", "stats")


@pytest.mark.reliability_slow  # ~3 min; tests/reliability/test_driver_loss.py kills a driver in the default suite
def test_sigkill_mid_iteration_2_then_resume_redoes_nothing_of_iteration_1(
    tmp_path, tiny_llama_path, ray_cluster
):
    run_dir = str(tmp_path / "run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_llama_path, run_dir,
                                                     tmp_path / "prompts.jsonl")))
    log = tmp_path / "driver.log"
    driver = start_driver(config, log)
    rd = RunDir(run_dir)
    try:
        wait_for(lambda: rd.exists("models/iter_001/_COMMITTED")
                 and rd.stage_success(2, "generations") is not None,
                 driver, timeout_s=900, log=log, what="iteration 2's generations")
    finally:
        kill_group(driver)
    assert rd.latest_model() == "iter_001"
    assert not rd.exists("models/iter_002/_COMMITTED")
    before = {s: rd.stage_success(1, s) for s in ITERATION_1_STAGES}
    generations_2 = rd.stage_success(2, "generations")
    assert all(before.values()), before

    summary = resume(run_dir)

    assert summary.latest_model == "iter_002"
    for i in (1, 2):
        verify_checkpoint(rd.model_uri(i))
    it1 = summary.iterations[0]["stages"]
    assert all(rec.get("skipped") for rec in it1.values()), it1
    # _SUCCESS records untouched: nothing of iteration 1 ran again, nor iteration 2's generation.
    assert {s: rd.stage_success(1, s) for s in ITERATION_1_STAGES} == before
    assert rd.stage_success(2, "generations") == generations_2
    assert summary.iterations[1]["stages"]["generations"].get("skipped")
    assert not summary.iterations[1]["stages"]["train"].get("skipped")
    assert os.path.exists(f"{run_dir}/iter_002/train/metrics.jsonl")
