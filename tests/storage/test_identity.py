"""Identities name content: the same bytes anywhere are one identity, other bytes another."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from aipo_ray.config import load_config
from aipo_ray.models import builtin_file, model_identity
from aipo_ray.pipeline.fingerprint import content_config
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import commit_checkpoint, upload_checkpoint
from aipo_ray.storage.identity import content_identity, local_dir_identity


def test_a_directory_and_its_committed_copies_local_and_s3_share_one_identity(
        tiny_llama_path, tmp_path, s3_storage):
    storage, prefix = s3_storage
    local = commit_checkpoint(tiny_llama_path, RunDir(str(tmp_path / "run")), 1)
    remote = prefix + "/models/iter_001"
    upload_checkpoint(tiny_llama_path, remote, storage)
    ids = {model_identity(tiny_llama_path), model_identity(local),
           model_identity(remote, storage)}
    assert len(ids) == 1 and ids.pop().startswith("manifest:")


def test_changing_one_byte_changes_a_directory_identity(tiny_llama_path, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_path, copy)
    before = local_dir_identity(copy)
    assert local_dir_identity(copy) == before  # from the cache
    config = copy / "config.json"
    config.write_text(config.read_text().replace("64", "65", 1))
    assert local_dir_identity(copy) != before


def test_the_base_model_pointer_has_its_target_identity(tiny_llama_path, tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_json("models/iter_000/pointer.json", {"path": tiny_llama_path})
    assert model_identity(rd.model_uri(0)) == model_identity(tiny_llama_path)


def test_a_builtin_model_is_the_sha256_of_its_shipped_file():
    path = builtin_file("builtin:smollm2-135m-instruct")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_identity("builtin:smollm2-135m-instruct") == f"file:{digest}"


def test_a_hub_name_carries_the_revision_the_hub_cache_resolved(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    assert model_identity("org/model") == "hf:org/model"
    ref = tmp_path / "models--org--model" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text("0123abcd\n")
    assert model_identity("org/model") == "hf:org/model@0123abcd"


def test_a_missing_local_model_path_is_an_error_not_a_hub_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        model_identity(str(tmp_path / "nope"))


def test_config_paths_become_content_and_placement_keys_drop_out(tmp_path, monkeypatch):
    prompts = tmp_path / "data" / "prompts.jsonl"
    prompts.parent.mkdir()
    prompts.write_text('{"prompt": "hi"}\n')
    monkeypatch.chdir(tmp_path)
    by_abs = load_config(None, ["model.path=builtin:smollm2-135m-instruct",
                                f"prompts.sources.0.path={prompts}",
                                "generation.timeout_s=5", "generation.cpus_per_replica=2"])
    by_rel = load_config(None, ["model.path=builtin:smollm2-135m-instruct",
                                "prompts.sources.0.path=data/prompts.jsonl"])
    a = content_config(by_abs, ("prompts", "generation.temperature", "generation"))
    b = content_config(by_rel, ("prompts", "generation.temperature", "generation"))
    assert a == b
    assert a["prompts"]["sources"][0]["path"] == content_identity(str(prompts))
    assert "timeout_s" not in a["generation"] and "cpus_per_replica" not in a["generation"]
    assert str(tmp_path) not in repr(a)
    os.utime(prompts, (0, 0))  # a touched file with the same bytes is the same content
    assert content_config(by_abs, ("prompts",)) == {"prompts": a["prompts"]}
