"""Driver loss: SIGKILL the driver inside each stage in turn, resume, compare with an unbroken run.

The driver runs as a subprocess with AIPO_TEST_PAUSE_IN_STAGE=<stage>: it stops after that stage
wrote its output and before its `_SUCCESS` (the widest crash window), the test kills its whole
process group (driver and its local Ray), then resumes in-process. Checked: the resumed run has
the same rows per table as an uninterrupted run, every stage finished before the kill is skipped
with its `_SUCCESS` untouched, and the killed stage's half-written output is not double counted.
"""

from __future__ import annotations

import pytest
import yaml

from aipo_ray.pipeline.driver import default_stages, resume, run
from aipo_ray.pipeline.runner import PAUSE_ENV
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import verify_checkpoint
from tests.e2e.conftest import tiny_run_config
from tests.e2e.processes import kill_group, start_driver, wait_for

STAGES = ("prompts", "generations", "rankings", "pairs", "ref_logps", "train", "commit", "stats")
TABLES = ("prompts", "generations", "rankings", "pairs", "ref_logps")


def row_summary(rd: RunDir, tables=TABLES) -> dict[str, object]:
    """What must not depend on a crash: each table's prompt_ids (with multiplicity) and counts."""
    out: dict[str, object] = {}
    for name in tables:
        table = rd.read_stage_table(1, name)
        out[name] = sorted(table["prompt_id"].to_pylist())
    if tables == TABLES:
        out["train_steps"] = rd.stage_success(1, "train")["extra"]["steps"]
        out["latest"] = rd.latest_model()
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama_path, ray_cluster):
    root = tmp_path_factory.mktemp("unbroken")
    run_dir = str(root / "run")
    run(_config_path(root, tiny_llama_path, run_dir))
    return row_summary(RunDir(run_dir))


def _config_path(root, model_dir: str, run_dir: str):
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(model_dir, run_dir, root / "prompts.jsonl",
                                                   iterations=1)))
    return path


def kill_inside(stage: str, tmp_path, model_dir: str) -> RunDir:
    """Start the driver, SIGKILL it inside `stage` (output written, no `_SUCCESS` yet)."""
    run_dir = str(tmp_path / "run")
    config = _config_path(tmp_path, model_dir, run_dir)
    log = tmp_path / "driver.log"
    driver = start_driver(config, log, env={PAUSE_ENV: stage})
    try:
        wait_for(lambda: "paused before _SUCCESS" in log.read_text(errors="replace"), driver,
                 timeout_s=600, log=log, what=f"the driver to pause inside {stage!r}")
    finally:
        kill_group(driver)
    rd = RunDir(run_dir)
    assert rd.stage_success(1, stage) is None
    return rd


def check_resume_after_kill(stage: str, rd: RunDir, until: str = "stats") -> dict[str, object]:
    """Resume (the stages up to `until`) and check what ran and what was skipped."""
    before = STAGES[:STAGES.index(stage)]
    records = {s: rd.stage_success(1, s) for s in before}
    assert all(records.values()), records
    if STAGES.index(stage) < STAGES.index("commit"):
        assert rd.latest_model() is None or rd.latest_model() == "iter_000"

    wanted = STAGES[:STAGES.index(until) + 1]
    summary = resume(rd.uri, stages=lambda config, i: [
        s for s in default_stages(config, i) if s.name in wanted])

    stages = summary.iterations[0]["stages"]
    assert list(stages) == list(wanted)
    for s in wanted:
        assert bool(stages[s].get("skipped")) == (s in before), (s, stages[s])
    assert {s: rd.stage_success(1, s) for s in before} == records  # untouched, not rewritten
    if until != "stats":
        return row_summary(rd, TABLES[:TABLES.index(until) + 1])
    verify_checkpoint(rd.model_uri(1))
    return row_summary(rd)


@pytest.mark.reliability
def test_driver_killed_inside_generations_resumes_with_every_row_once(
    tmp_path, tiny_llama_path, ray_cluster
):
    """Fast representative: no baseline run, the contracts themselves are the reference; the
    resume stops after `pairs` (training is covered by the slow variant)."""
    rd = kill_inside("generations", tmp_path, tiny_llama_path)
    rows = check_resume_after_kill("generations", rd, until="pairs")
    prompts = rows["prompts"]
    assert len(prompts) == 6 and len(set(prompts)) == 6
    # N=3 candidates per prompt, exactly once: the half-written table was cleared, not appended.
    assert rows["generations"] == sorted(prompts * 3)
    assert rows["rankings"] == prompts
    assert set(rows["pairs"]) <= set(prompts) and len(set(rows["pairs"])) == len(rows["pairs"])


@pytest.mark.reliability_slow
@pytest.mark.parametrize("stage", STAGES)
def test_driver_killed_inside_each_stage_resumes_to_the_uninterrupted_rows(
    stage, tmp_path, tiny_llama_path, uninterrupted
):
    rd = kill_inside(stage, tmp_path, tiny_llama_path)
    assert check_resume_after_kill(stage, rd) == uninterrupted
