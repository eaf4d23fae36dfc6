"""Stages are identified by content: a moved run redoes nothing, a recommitted θ_t redoes exactly
what reads it, and a config change on an existing run says what it invalidates."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from aipo_ray.config import load_config
from aipo_ray.pipeline.driver import resume, run
from aipo_ray.storage import RunDir, filesystem

from .chain import chain

STAGES = ("prompts", "generations", "train", "commit")


def make_config(run_dir: str, model_dir: str, *overrides: str, storage=None):
    config = load_config(None, [f"model.path={model_dir}", f"run_dir={run_dir}", "iterations=2",
                                "ray.num_cpus=2", *overrides])
    return config if storage is None else config.model_copy(update={"storage": storage})


def successes(rd: RunDir) -> dict[tuple[int, str], dict]:
    return {(it, name): rd.stage_success(it, name) for it in (1, 2) for name in STAGES}


@pytest.fixture
def finished_run(tmp_path, tiny_llama_path, ray_cluster):
    """A finished two-iteration run of the counting chain; returns (run dir, its _SUCCESS)."""
    root = str(tmp_path / "run")
    runs = Counter()
    run(make_config(root, tiny_llama_path), stages=chain(runs, tiny_llama_path))
    assert runs == Counter({(it, s): 1 for it in (1, 2) for s in STAGES})
    return root, successes(RunDir(root))


def test_a_copied_run_directory_executes_no_stage(finished_run, tmp_path, tiny_llama_path):
    root, before = finished_run
    copy = str(tmp_path / "elsewhere" / "copy")
    shutil.copytree(root, copy)
    runs = Counter()
    summary = run(make_config(copy, tiny_llama_path), stages=chain(runs, tiny_llama_path))
    assert runs == Counter()
    assert all(rec["skipped"] for it in summary.iterations for rec in it["stages"].values())
    assert successes(RunDir(copy)) == before


def test_a_run_moved_to_s3_executes_no_stage(finished_run, s3_storage, tiny_llama_path):
    root, before = finished_run
    storage, prefix = s3_storage
    fs, path = filesystem(prefix, storage)
    fs.put(root + "/", path, recursive=True)
    runs = Counter()
    run(make_config(prefix, tiny_llama_path, storage=storage), stages=chain(runs, tiny_llama_path))
    assert runs == Counter()
    assert successes(RunDir(prefix, storage)) == before


def test_no_path_enters_a_fingerprint(finished_run, tiny_llama_path):
    root, before = finished_run
    for rec in before.values():
        text = json.dumps(rec["identity"])
        assert root not in text and tiny_llama_path not in text


def test_a_recommitted_model_redoes_exactly_the_stages_that_read_it(finished_run,
                                                                     tiny_llama_path, caplog):
    root, before = finished_run
    runs = Counter()
    config = make_config(root, tiny_llama_path, "training.learning_rate=2e-5")
    with caplog.at_level(logging.INFO, logger="aipo_ray"):
        run(config, stages=chain(runs, tiny_llama_path))
    # Iteration 1: its train config changed, so train and the commit after it; the prompts and
    # generations of θ_0 stay. Iteration 2: a fixed pool reads no model and stays; everything
    # that reads the recommitted θ_1 and what follows it is redone.
    assert runs == Counter({(1, "train"): 1, (1, "commit"): 1, (2, "generations"): 1,
                            (2, "train"): 1, (2, "commit"): 1})
    after = successes(RunDir(root))
    assert after[(2, "prompts")] == before[(2, "prompts")]
    assert after[(2, "generations")]["identity"]["models"]["policy"] != \
        before[(2, "generations")]["identity"]["models"]["policy"]
    said = caplog.text
    assert "will redo iteration 1 stage 'train': config training.learning_rate" in said
    assert "will redo iteration 2 stage 'generations': θ_1 will be recommitted" in said
    assert "will redo iteration 2 stage 'prompts'" not in said


def test_a_config_change_is_recorded_and_resume_uses_the_latest_config(finished_run,
                                                                       tiny_llama_path):
    root, _ = finished_run
    run(make_config(root, tiny_llama_path, "training.learning_rate=2e-5"),
        stages=chain(Counter(), tiny_llama_path))
    meta = RunDir(root).read_json("run.json")
    assert meta["config"]["training"]["learning_rate"] == 2e-5
    (change,) = meta["history"]
    assert change["changes"] == {"training.learning_rate": [5e-07, 2e-05]}
    assert change["at"]
    runs = Counter()
    resume(root, stages=chain(runs, tiny_llama_path))
    assert runs == Counter()  # the latest config: nothing to redo


def test_a_model_whose_manifest_changed_after_commit_is_refused(finished_run, tiny_llama_path):
    from aipo_ray.storage.checkpoint import CheckpointError, materialize_checkpoint

    root, _ = finished_run
    manifest = Path(RunDir(root).path("models", "iter_001", "manifest.json"))
    body = json.loads(manifest.read_text())
    body["files"] = body["files"][:-1]  # still a valid manifest, but not the committed one
    manifest.write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="sha256 differs from the one _COMMITTED recorded"):
        materialize_checkpoint(RunDir(root).model_uri(1))
