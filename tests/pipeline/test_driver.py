"""The driver chains iterations, hands θ_i to iteration i+1, and resumes without redoing work."""

import json
import re

import pyarrow as pa

from aipo_ray.cli import main as aipo_main
from aipo_ray.config import load_config
from aipo_ray.console import StageProgress
from aipo_ray.pipeline import Stage, StageResult
from aipo_ray.pipeline.driver import resume, run
from aipo_ray.pipeline.status import _run_eta
from aipo_ray.storage import RunDir, make_prompt_id


class RecordPolicy(Stage):
    """Writes one row naming the model it would generate with, like a generation stage."""

    name = "prompts"
    inputs = ()

    def __init__(self):
        self.seen = []

    def run(self, ctx):
        self.seen.append((ctx.iteration, ctx.policy_uri))
        text = f"made with {ctx.policy_uri}"
        ctx.write("prompts", pa.table({
            "prompt_id": [make_prompt_id(text)], "prompt": [text], "source": ["test"],
            "iteration": [ctx.iteration],
        }))
        return StageResult(rows_in=0, rows_out=1)


class MarkCommitted(Stage):
    """Stands in for training + commit: writes models/iter_i/_COMMITTED and LATEST."""

    name = "commit"
    inputs = ("prompts",)
    commits_model = True

    def run(self, ctx):
        rd = ctx.run_dir
        rd.write_json(f"models/{rd.model_name(ctx.iteration)}/manifest.json", {"files": []})
        rd.fs.pipe_file(rd.path("models", rd.model_name(ctx.iteration), "_COMMITTED"), b"")
        rd.fs.pipe_file(rd.path("LATEST"), rd.model_name(ctx.iteration).encode())
        return StageResult(rows_in=1, rows_out=1)


def make_config(tmp_path, iterations=2):
    return load_config(None, [
        "model.path=builtin:smollm2-135m-instruct", f"run_dir={tmp_path / 'run'}",
        f"iterations={iterations}", "ray.num_cpus=2",
    ])


def test_iteration_i_generates_with_the_model_committed_by_iteration_i_minus_1(tmp_path, ray_cluster):
    config = make_config(tmp_path)
    recorder = RecordPolicy()
    summary = run(config, stages=[recorder, MarkCommitted()])
    root = str(tmp_path / "run")
    assert recorder.seen == [(1, f"{root}/models/iter_000"), (2, f"{root}/models/iter_001")]
    assert summary.latest_model == "iter_002"
    rd = RunDir(root)
    assert rd.read_json("models/iter_000/pointer.json") == {"path": "builtin:smollm2-135m-instruct"}
    assert rd.read_json("run.json")["config"]["iterations"] == 2


def test_resume_skips_every_finished_stage(tmp_path, ray_cluster):
    config = make_config(tmp_path)
    run(config, stages=[RecordPolicy(), MarkCommitted()])
    before = RunDir(str(tmp_path / "run")).stage_success(1, "prompts")
    recorder = RecordPolicy()
    summary = resume(str(tmp_path / "run"), stages=[recorder, MarkCommitted()])
    assert recorder.seen == []
    assert all(rec["skipped"] for it in summary.iterations for rec in it["stages"].values())
    assert RunDir(str(tmp_path / "run")).stage_success(1, "prompts") == before


def test_more_iterations_on_resume_continue_from_the_last_commit(tmp_path, ray_cluster):
    run(make_config(tmp_path, iterations=1), stages=[RecordPolicy(), MarkCommitted()])
    recorder = RecordPolicy()
    run(make_config(tmp_path, iterations=3), stages=[recorder, MarkCommitted()])
    assert [it for it, _ in recorder.seen] == [2, 3]


def test_status_reports_stages_and_checkpoints(tmp_path, ray_cluster, capsys):
    run(make_config(tmp_path), stages=[RecordPolicy(), MarkCommitted()])
    assert aipo_main(["status", str(tmp_path / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["latest_model"] == "iter_002"
    assert [it["iteration"] for it in info["iterations"]] == [1, 2]
    stages = info["iterations"][0]["stages"]
    assert stages["prompts"] == {
        "state": "done", "done": True, "rows_in": 0, "rows_out": 1, "rejected": 0,
        "seconds": stages["prompts"]["seconds"], "reused_from": None,
    }
    # Pipeline order (the stage registry), with the configured chain's other stages pending.
    assert list(stages) == ["self_instruct", "prompts", "generations", "rankings", "pairs",
                            "ref_logps", "train", "commit", "stats"]
    assert stages["generations"] == {"state": "pending", "done": False}
    names = {c["name"]: c for c in info["checkpoints"]}
    assert names["iter_000"]["pointer"] and names["iter_002"]["committed"]
    assert aipo_main(["status", str(tmp_path / "run")]) == 0
    assert "latest model: iter_002" in capsys.readouterr().out


def test_status_shows_a_started_stage_progress_and_watch_ends_with_the_run(tmp_path, ray_cluster,
                                                                          capsys):
    run(make_config(tmp_path), stages=[RecordPolicy(), MarkCommitted()])
    rd = RunDir(str(tmp_path / "run"))
    stage_dir = rd.iteration_path(2) + "/prompts"
    rd.fs.rm_file(stage_dir + "/_SUCCESS")
    snapshot = StageProgress("  prompts", total=12, done=3, unit="prompts").snapshot()
    rd.fs.pipe_file(stage_dir + "/_PROGRESS", json.dumps({**snapshot, "eta_s": 42.0}).encode())
    assert aipo_main(["status", str(tmp_path / "run")]) == 0
    assert re.search(r"prompts\s+started\s+3/12 prompts, .*ETA 42s", capsys.readouterr().out)
    # --watch returns once every planned stage is done (here: at once, after the rerun).
    run(make_config(tmp_path), stages=[RecordPolicy(), MarkCommitted()])
    assert aipo_main(["status", str(tmp_path / "run"), "--watch", "0.1"]) == 0


def test_run_eta_adds_up_the_mean_time_of_each_stage_left():
    done = {"state": "done", "done": True}
    iterations = [
        {"iteration": 1, "stages": {"a": {**done, "seconds": 10.0}, "b": {**done, "seconds": 30.0}}},
        {"iteration": 2, "stages": {"a": {**done, "seconds": 20.0},
                                    "b": {"state": "started", "done": False,
                                          "progress": {"eta_s": 5.0}}}},
    ]
    # iteration 2's b: its own ETA (5); iteration 3: mean a (15) + mean b (30).
    assert _run_eta(iterations, ["a", "b"], planned=3) == 50.0
    assert _run_eta(iterations, ["a", "b", "c"], planned=3) is None  # c never ran: unknown


def test_status_of_a_path_that_is_not_a_run_directory_exits_2(tmp_path, capsys):
    assert aipo_main(["status", str(tmp_path / "no" / "such" / "dir")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_validate_prints_errors_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: x}\ntraining: {learning_rate: -1, nope: 3}\n")
    assert aipo_main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate" in err and "training.nope: unknown key" in err
