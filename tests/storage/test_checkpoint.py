"""The checkpoint commit protocol against a local directory and a real S3 server (weed mini)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from aipo_ray.models import resolve_model_path
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import (
    COMMITTED,
    MANIFEST,
    CheckpointError,
    commit_checkpoint,
    materialize_checkpoint,
    upload_checkpoint,
    verify_checkpoint,
)


@pytest.fixture
def staged_model(tmp_path, tiny_llama_path) -> Path:
    """A writable copy of the tiny Llama, as the trainer stages it."""
    target = tmp_path / "staged"
    shutil.copytree(tiny_llama_path, target)
    return target


def _assert_same_weights(expected_dir, actual_dir):
    expected = load_file(Path(expected_dir) / "model.safetensors")
    actual = load_file(Path(actual_dir) / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name
    model = AutoModelForCausalLM.from_pretrained(actual_dir)  # plain transformers loads it
    for name, tensor in model.state_dict().items():
        if name in expected:
            assert torch.equal(tensor, expected[name]), name


def test_local_commit_round_trips_weights_bit_for_bit(tmp_path, staged_model):
    run = RunDir(str(tmp_path / "run"))
    uri = commit_checkpoint(staged_model, run, 1)
    assert uri == run.model_uri(1)
    assert run.latest_model() == "iter_001"
    local = materialize_checkpoint(uri)
    assert Path(local) == tmp_path / "run" / "models" / "iter_001"  # verified in place
    _assert_same_weights(staged_model, local)


def test_s3_commit_round_trips_weights_bit_for_bit(s3_storage, staged_model):
    storage, prefix = s3_storage
    run = RunDir(prefix, storage)
    uri = commit_checkpoint(staged_model, run, 1)
    assert uri == f"{prefix}/models/iter_001"
    assert run.latest_model() == "iter_001"
    local = resolve_model_path(uri, storage)  # what the next iteration's reference does
    assert Path(local).is_relative_to(Path(storage.local_cache_dir))
    _assert_same_weights(staged_model, local)
    assert materialize_checkpoint(uri, storage) == local  # the verified cache entry is reused


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path, staged_model):
    import hashlib

    run = RunDir(str(tmp_path / "run"))
    commit_checkpoint(staged_model, run, 1)
    model_dir = tmp_path / "run" / "models" / "iter_001"
    manifest = json.loads((model_dir / MANIFEST).read_text())
    listed = {e["path"]: e for e in manifest["files"]}
    assert set(listed) == {p.name for p in staged_model.iterdir()}
    for name, entry in listed.items():
        data = (staged_model / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    marker = json.loads((model_dir / COMMITTED).read_text())
    assert marker["manifest_sha256"] == hashlib.sha256((model_dir / MANIFEST).read_bytes()).hexdigest()


def test_next_commit_moves_latest_and_keeps_previous_model(tmp_path, staged_model):
    run = RunDir(str(tmp_path / "run"))
    commit_checkpoint(staged_model, run, 1)
    commit_checkpoint(staged_model, run, 2)
    assert run.latest_model() == "iter_002"
    verify_checkpoint(run.model_uri(1))  # the previous reference is still there and valid
    verify_checkpoint(run.model_uri(2))


def test_truncated_upload_is_refused_at_load(s3_storage, staged_model):
    storage, prefix = s3_storage
    uri = f"{prefix}/models/iter_001"
    upload_checkpoint(staged_model, uri, storage)
    run = RunDir(prefix, storage)
    full = run.fs.cat_file(run.path("models/iter_001/model.safetensors"))
    run.fs.pipe_file(run.path("models/iter_001/model.safetensors"), full[: len(full) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, manifest says"):
        materialize_checkpoint(uri, storage)
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(uri, storage)


def test_missing_file_is_refused_at_load(tmp_path, staged_model):
    uri = str(tmp_path / "ckpt")
    upload_checkpoint(staged_model, uri)
    (tmp_path / "ckpt" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: listed in manifest\.json but missing"):
        resolve_model_path(uri)


def test_corrupted_file_of_right_size_is_refused(tmp_path, staged_model):
    uri = str(tmp_path / "ckpt")
    upload_checkpoint(staged_model, uri)
    path = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 differs"):
        verify_checkpoint(uri)


def test_uncommitted_or_manifestless_checkpoint_is_refused(tmp_path, staged_model):
    uri = str(tmp_path / "ckpt")
    upload_checkpoint(staged_model, uri)
    (tmp_path / "ckpt" / COMMITTED).unlink()  # a crash between upload and commit
    with pytest.raises(CheckpointError, match="no _COMMITTED"):
        materialize_checkpoint(uri)
    (tmp_path / "ckpt" / COMMITTED).write_text("{}")
    (tmp_path / "ckpt" / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"no manifest\.json"):
        verify_checkpoint(uri)


def test_recommit_invalidates_before_overwriting(tmp_path, staged_model, monkeypatch):
    """A recommit that dies mid-upload must not leave the old _COMMITTED vouching for new files."""
    uri = str(tmp_path / "ckpt")
    upload_checkpoint(staged_model, uri)
    import fsspec.implementations.local as local

    calls = {"n": 0}
    real_put = local.LocalFileSystem.put_file

    def dying_put(self, lpath, rpath, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("driver killed mid-upload")
        return real_put(self, lpath, rpath, **kw)

    monkeypatch.setattr(local.LocalFileSystem, "put_file", dying_put)
    with pytest.raises(KeyboardInterrupt):
        upload_checkpoint(staged_model, uri)
    with pytest.raises(CheckpointError, match="no _COMMITTED"):
        verify_checkpoint(uri)
