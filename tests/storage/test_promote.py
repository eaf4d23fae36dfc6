"""One upload per iteration: the commit stage promotes the trainer's staged checkpoint to
`models/iter_NNN` by a rename (local) or a server-side copy (S3), keeps its identity, leaves no
staged copy, and a re-run after the move finds the model where it went."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import s3fs

from aipo_ray.pipeline import DamagedInput, run_stage
from aipo_ray.pipeline.stages.commit import CommitStage
from aipo_ray.storage.checkpoint import (
    COMMITTED,
    MANIFEST,
    checkpoint_identity,
    verify_checkpoint,
)
from aipo_ray.storage.promote import (
    copy_checkpoint,
    locate_staged,
    promote_checkpoint,
    scratch_dir,
    stage_checkpoint,
)
from tests.reliability.commits import prepare, run_config, staged_copy


def _staged_and_target(ctx):
    return ctx.run_dir.staged_model_uri(ctx.iteration), ctx.output_model_uri


def _files(fs, path) -> list[str]:
    """Objects under `path` (S3 servers like SeaweedFS keep empty directory entries)."""
    return [p for p, e in fs.find(path, detail=True).items() if e["type"] != "directory"]


@pytest.fixture
def local_ctx(tiny_llama_path, tmp_path):
    config = run_config(tiny_llama_path, str(tmp_path / "run"))
    return prepare(config, staged_copy(tiny_llama_path, tmp_path / "staged"))


def test_local_commit_renames_the_staged_model_without_writing_its_bytes(local_ctx):
    staged, target = _staged_and_target(local_ctx)
    inodes = {p.name: p.stat().st_ino for p in Path(staged).iterdir()}
    identity = checkpoint_identity(staged)
    manifest = (Path(staged) / MANIFEST).read_bytes()

    record = run_stage(CommitStage(), local_ctx)

    assert record["extra"]["promoted"] == "renamed"
    assert not os.path.exists(staged)  # no staged copy left
    # The same inodes: the files were moved, not written again.
    assert {p.name: p.stat().st_ino for p in Path(target).iterdir()} == inodes
    assert (Path(target) / MANIFEST).read_bytes() == manifest
    assert checkpoint_identity(target) == identity  # fingerprints of what reads θ_2 stay valid
    verify_checkpoint(target)
    assert local_ctx.run_dir.latest_model() == "iter_002"


def test_rerun_after_the_move_recognises_the_committed_target(local_ctx):
    """The driver died after the rename, before `LATEST` and the commit's `_SUCCESS`."""
    staged, target = _staged_and_target(local_ctx)
    promote_checkpoint(locate_staged(staged, target), staged, target)
    assert local_ctx.run_dir.latest_model() == "iter_001"

    record = run_stage(CommitStage(), local_ctx)

    assert record["extra"]["promoted"] == "already"
    assert local_ctx.run_dir.latest_model() == "iter_002"
    verify_checkpoint(target)


def test_rerun_after_the_move_with_a_damaged_target_sends_it_back_to_train(local_ctx):
    staged, target = _staged_and_target(local_ctx)
    promote_checkpoint(locate_staged(staged, target), staged, target)
    (Path(target) / "tokenizer.json").unlink()
    with pytest.raises(DamagedInput, match=r"'train'.*iter_002/tokenizer\.json: listed in"):
        run_stage(CommitStage(), local_ctx)
    assert local_ctx.run_dir.latest_model() == "iter_001"


def test_recommit_replaces_a_stale_target(local_ctx):
    """A target left by an earlier commit of this iteration (another model) is replaced whole."""
    target = local_ctx.output_model_uri
    os.makedirs(target)
    Path(target, "stale.bin").write_bytes(b"old")
    run_stage(CommitStage(), local_ctx)
    assert not Path(target, "stale.bin").exists()
    assert not list(Path(target).parent.glob(".iter_002.replaced-*"))
    verify_checkpoint(target)


class _S3Calls:
    """Every S3 API call this process makes, by method and key."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        real = s3fs.S3FileSystem._call_s3

        async def recording(fs, method, *args, **kwargs):
            self.calls.append((method, kwargs.get("Key", "")))
            return await real(fs, method, *args, **kwargs)

        monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", recording)

    def keys(self, *methods: str) -> set[str]:
        return {key for method, key in self.calls if method in methods}


def test_s3_commit_copies_server_side_and_moves_no_byte_through_the_driver(
    s3_storage, tiny_llama_path, tmp_path, monkeypatch
):
    storage, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix, storage)
    ctx = prepare(config, staged_copy(tiny_llama_path, tmp_path / "staged", big_bytes=4 << 20))
    staged, target = _staged_and_target(ctx)
    identity = checkpoint_identity(staged, storage)
    files = {e["path"] for e in verify_checkpoint(staged, storage)["files"]}
    calls = _S3Calls(monkeypatch)

    record = run_stage(CommitStage(), ctx)

    assert record["extra"]["promoted"] == "copied"
    copied = {k.rsplit("/models/iter_002/", 1)[-1] for k in calls.keys("copy_object")}
    assert copied == files
    # Only the small markers travel: no model file is downloaded or uploaded.
    for key in calls.keys("get_object", "put_object", "upload_part", "create_multipart_upload"):
        assert key.rsplit("/", 1)[-1] in {MANIFEST, COMMITTED, "promoted.json", "_SUCCESS",
                                          "_STARTED", "LATEST"}, key
    monkeypatch.undo()
    rd = ctx.run_dir
    assert not _files(rd.fs, rd.path("iter_002/train/model"))  # no staged copy left
    assert checkpoint_identity(target, storage) == identity
    verify_checkpoint(target, storage)
    assert rd.latest_model() == "iter_002"


@pytest.fixture
def s3_ctx(s3_storage, tiny_llama_path, tmp_path):
    storage, prefix = s3_storage
    return prepare(run_config(tiny_llama_path, prefix, storage),
                   staged_copy(tiny_llama_path, tmp_path / "staged"))


def test_s3_staged_object_changed_after_upload_is_refused_by_its_etag(s3_ctx):
    ctx = s3_ctx
    rd = ctx.run_dir
    path = rd.path("iter_002/train/model/model.safetensors")
    data = bytearray(rd.fs.cat_file(path))
    data[-1] ^= 0xFF  # same size, other bytes
    rd.fs.pipe_file(path, bytes(data))
    with pytest.raises(DamagedInput, match=r"model\.safetensors: ETag differs"):
        run_stage(CommitStage(), ctx)
    assert rd.latest_model() == "iter_001"


def test_s3_rerun_after_a_half_deleted_staging_directory_finishes_the_commit(s3_ctx):
    """The driver died while deleting the staged objects (its `_COMMITTED` already gone)."""
    ctx, storage = s3_ctx, s3_ctx.config.storage
    staged, target = _staged_and_target(ctx)
    source = locate_staged(staged, target, storage)
    copy_checkpoint(source, target, storage)
    rd = ctx.run_dir
    rd.fs.pipe_file(rd.path("iter_002/train/promoted.json"),
                    f'{{"to": "{target}", "manifest_sha256": "{source.sha256}"}}'.encode())
    rd.fs.rm_file(rd.path(f"iter_002/train/model/{COMMITTED}"))
    rd.fs.rm_file(rd.path("iter_002/train/model/config.json"))

    record = run_stage(CommitStage(), ctx)

    assert record["extra"]["promoted"] == "already"
    assert not _files(rd.fs, rd.path("iter_002/train/model"))
    assert rd.latest_model() == "iter_002"


def test_train_stage_copied_from_a_promoted_run_is_committed_from_where_it_went(
    local_ctx, tiny_llama_path, tmp_path
):
    """A sweep reuses iteration 2's train stage of a run whose commit already moved the model:
    the copy holds only the note, and the commit copies the model from the other run."""
    import shutil

    from aipo_ray.pipeline import StageContext
    from aipo_ray.storage import RunDir

    run_stage(CommitStage(), local_ctx)  # run A: staged model renamed to A's models/iter_002
    other = run_config(tiny_llama_path, str(tmp_path / "run-b"))
    rd = RunDir(other.resolved_run_dir, other.storage)
    shutil.copytree(local_ctx.run_dir.path("iter_002/train"), rd.path("iter_002/train"))
    ctx = StageContext(config=other, run_dir=rd, iteration=2)

    record = CommitStage().run(ctx)

    assert record.extra["promoted"] == "copied"
    assert checkpoint_identity(ctx.output_model_uri) == checkpoint_identity(
        local_ctx.output_model_uri)
    verify_checkpoint(local_ctx.output_model_uri)  # the other run's model is left alone
    assert rd.latest_model() == "iter_002"


def test_trainer_stages_a_local_model_by_renaming_what_it_saved(tiny_llama_path, tmp_path):
    """The trainer saves next to the staging location and the commit markers go in place: the
    staged files are the saved files (same inodes), written once."""
    import shutil

    uri = str(tmp_path / "run" / "iter_001" / "train" / "model")
    saved = Path(scratch_dir(uri)) / ".saved"
    shutil.copytree(tiny_llama_path, saved)
    inodes = {p.name: p.stat().st_ino for p in saved.iterdir()}
    stage_checkpoint(str(saved), uri)
    assert not saved.exists()
    assert {p.name: p.stat().st_ino for p in Path(uri).iterdir()
            if p.name not in (MANIFEST, COMMITTED)} == inodes
    verify_checkpoint(uri)
