"""Checkpoint faults in the commit of θ_2: each is refused at load naming the file, `LATEST`
still names iter_001, and a resume skips the finished train stage and redoes only the commit.

Single-file refusals (truncation, missing file, flipped byte, no manifest) of `verify_checkpoint`
itself are in tests/storage/test_checkpoint.py; here the faults hit a run directory mid-pipeline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import yaml

from aipo_ray.models import resolve_model_path
from aipo_ray.pipeline import DamagedInput, Stage, StageResult, run_stage
from aipo_ray.pipeline.driver import run_iteration
from aipo_ray.pipeline.stages.commit import CommitStage
from aipo_ray.storage import StorageError
from aipo_ray.storage.checkpoint import (
    COMMITTED,
    MANIFEST,
    CheckpointError,
    materialize_checkpoint,
    upload_checkpoint,
    verify_checkpoint,
)
from tests.e2e.processes import REPO, child_env

from .commits import StagedTrain, prepare, resume_commit, run_config, staged_copy

pytestmark = pytest.mark.reliability


def _assert_only_commit_redone(ctx, staged):
    records = resume_commit(ctx, staged)
    assert records["train"].get("skipped") and not records["commit"].get("skipped")
    verify_checkpoint(ctx.output_model_uri, ctx.config.storage)
    assert ctx.run_dir.latest_model() == "iter_002"


def _flip_last_byte(fs, path):
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0xFF
    fs.pipe_file(path, bytes(data))


# A crash after step 4 of the commit (files, manifest, _COMMITTED written; LATEST and the commit
# stage's _SUCCESS not yet), then storage damage to the new model.
DAMAGE = {
    "removed_file": (lambda fs, root: fs.rm_file(f"{root}/tokenizer.json"),
                     r"iter_002/tokenizer\.json: listed in manifest\.json but missing"),
    "flipped_bytes": (lambda fs, root: _flip_last_byte(fs, f"{root}/model.safetensors"),
                      r"iter_002/model\.safetensors: sha256 differs"),
    "committed_without_manifest": (lambda fs, root: fs.rm_file(f"{root}/{MANIFEST}"),
                                   r"iter_002: _COMMITTED but no manifest\.json"),
    "upload_cut_before_commit": (lambda fs, root: fs.rm_file(f"{root}/{COMMITTED}"),
                                 r"iter_002: no _COMMITTED"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_new_model_is_refused_and_resume_redoes_only_the_commit(
    damage, s3_storage, tiny_llama_path, tmp_path
):
    storage, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix, storage)
    staged = staged_copy(tiny_llama_path, tmp_path / "staged")
    ctx = prepare(config, staged)
    upload_checkpoint(staged, ctx.output_model_uri, storage)
    rd = ctx.run_dir
    apply, message = DAMAGE[damage]
    apply(rd.fs, rd.path("models/iter_002"))

    with pytest.raises(CheckpointError, match=message):
        materialize_checkpoint(ctx.output_model_uri, storage)
    with pytest.raises(CheckpointError, match=message):
        resolve_model_path(ctx.output_model_uri, storage=storage)
    assert rd.latest_model() == "iter_001"
    verify_checkpoint(rd.model_uri(1), storage)  # the previous good model is intact

    _assert_only_commit_redone(ctx, staged)


def test_commit_killed_mid_upload_is_refused_and_redone(s3_server, s3_storage, tiny_llama_path,
                                                        tmp_path):
    """A separate process commits θ_2 (with a 48 MB file) and is SIGKILLed mid-upload."""
    storage, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix, storage)
    staged = staged_copy(tiny_llama_path, tmp_path / "staged", big_bytes=48 << 20)
    ctx = prepare(config, staged)
    rd = ctx.run_dir
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "name": "faults", "run_dir": prefix, "model": {"path": tiny_llama_path},
        "storage": {"endpoint_url": s3_server.endpoint, "region": "us-east-1",
                    "local_cache_dir": str(tmp_path / "child-cache")},
    }))
    env = child_env(AWS_ACCESS_KEY_ID=s3_server.access_key,
                    AWS_SECRET_ACCESS_KEY=s3_server.secret_key)
    child = subprocess.Popen([sys.executable, "-m", "tests.reliability.commits", str(path)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not rd.exists("models/iter_002/config.json"):
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the child never started uploading"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert not rd.exists(f"models/iter_002/{MANIFEST}"), "the kill came too late to test anything"

    with pytest.raises(CheckpointError, match=r"iter_002: no _COMMITTED"):
        materialize_checkpoint(ctx.output_model_uri, storage)
    assert rd.latest_model() == "iter_001"
    assert rd.stage_success(2, "commit") is None
    _assert_only_commit_redone(ctx, staged)


def test_storage_outage_mid_commit_is_retried_then_commits(s3_server, s3_storage,
                                                          tiny_llama_path, tmp_path, caplog):
    """The S3 server is stopped once the upload has begun and started again 1.5 s later."""
    storage, prefix = s3_storage
    storage = storage.model_copy(update={"max_retries": 10, "retry_backoff_s": 0.3,
                                         "retry_max_wait_s": 2.0})
    config = run_config(tiny_llama_path, prefix, storage)
    staged = staged_copy(tiny_llama_path, tmp_path / "staged", big_bytes=16 << 20)
    ctx = prepare(config, staged)
    rd = ctx.run_dir

    def outage():
        while not rd.exists("models/iter_002/config.json"):
            time.sleep(0.02)
        s3_server.stop(kill=True)
        time.sleep(1.5)
        s3_server.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    with caplog.at_level("WARNING", logger="aipo_ray.storage.fs"):
        record = run_stage(CommitStage(), ctx)
    thread.join(timeout=60)
    assert "transient storage error" in caplog.text  # it did hit the outage, and retried
    assert record["extra"]["latest"] == "iter_002"
    verify_checkpoint(ctx.output_model_uri, storage)


def test_storage_left_down_fails_with_storage_error_and_commits_nothing(
    s3_server, s3_storage, tiny_llama_path, tmp_path
):
    storage, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix, storage)  # max_retries 3, backoff 0.2 s
    staged = staged_copy(tiny_llama_path, tmp_path / "staged")
    ctx = prepare(config, staged)
    materialize_checkpoint(ctx.run_dir.uri_of("iter_002/train/model"), storage)  # cached
    started = time.monotonic()
    with s3_server.down(kill=True), pytest.raises(StorageError, match="unreachable after 4 attempts"):
        run_stage(CommitStage(), ctx)
    assert time.monotonic() - started < 60  # bounded: 0.2 + 0.4 + 0.8 s of backoff, not forever
    rd = ctx.run_dir
    assert rd.stage_success(2, "commit") is None
    assert not rd.exists(f"models/iter_002/{COMMITTED}")
    assert rd.latest_model() == "iter_001"
    _assert_only_commit_redone(ctx, staged)


def test_damaged_staged_model_sends_the_resumed_iteration_back_to_train(
    s3_storage, tiny_llama_path, tmp_path
):
    """train wrote `_SUCCESS`, then storage lost a file of the staged model: the commit refuses
    it naming the file, and the driver trains again instead of failing on every resume."""
    storage, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix, storage)
    staged = staged_copy(tiny_llama_path, tmp_path / "staged")
    ctx = prepare(config, staged)
    rd = ctx.run_dir
    first_train = rd.stage_success(2, "train")
    rd.fs.rm_file(rd.path("iter_002", "train", "model", "tokenizer.json"))
    with pytest.raises(DamagedInput, match=r"'train'.*tokenizer\.json: listed in manifest"):
        run_stage(CommitStage(), ctx)

    records = run_iteration([StagedTrain(staged), CommitStage()], ctx)
    assert not records["train"].get("skipped") and not records["commit"].get("skipped")
    assert records["train"]["finished_at"] >= first_train["finished_at"]
    left = rd.fs.find(rd.path("iter_002/train/model"), detail=True).values()
    assert all(e["type"] == "directory" for e in left)  # promoted: no staged copy left
    verify_checkpoint(ctx.output_model_uri, storage)
    assert rd.latest_model() == "iter_002"


class _AlwaysDamaged(Stage):
    """A commit whose staged input stays damaged however often train reruns."""

    name, inputs, config_keys = "commit", ("train",), ()

    def run(self, ctx):
        raise DamagedInput("train", "still broken")


class _CountingTrain(StagedTrain):
    def __init__(self, source: str):
        super().__init__(source)
        self.runs = 0

    def run(self, ctx) -> StageResult:
        self.runs += 1
        return super().run(ctx)


def test_damage_a_rerun_does_not_cure_is_raised_after_one_rerun(tiny_llama_path, tmp_path):
    config = run_config(tiny_llama_path, str(tmp_path / "run"))
    staged = staged_copy(tiny_llama_path, tmp_path / "staged")
    ctx = prepare(config, staged)  # train done once, outside the count
    train = _CountingTrain(staged)
    with pytest.raises(DamagedInput, match="still broken"):
        run_iteration([train, _AlwaysDamaged()], ctx)
    assert train.runs == 1  # skipped (valid _SUCCESS), then rerun once, then raised
