"""Ray Train's mid-epoch checkpoints on S3 (issue 14): with an s3:// storage path the workers
write their checkpoint shards through the run's own s3fs filesystem (the local SeaweedFS
endpoint and its credentials, which Ray Train's own S3 resolution would not know), and a
finished run removes them."""

from __future__ import annotations

import threading
import time

import pytest

from aipo_ray.storage import filesystem
from aipo_ray.training.trainer import train_policy

from .test_resume_on_cpu import _pairs_and_ref
from .test_trainer_on_cpu import make_config


@pytest.mark.reliability
def test_checkpoints_go_to_an_s3_run_directory_and_are_removed_after(
        ray_cluster, tiny_llama_path, tmp_path, s3_storage):
    storage, prefix = s3_storage
    config = make_config(tiny_llama_path, num_workers=1, global_batch_size=2, num_epochs=1,
                         checkpoint_every_steps=1)
    config = config.model_copy(update={"storage": storage})
    pairs, ref = _pairs_and_ref()
    train_dir = f"{prefix}/run/_ray_train"
    fs, path = filesystem(train_dir, storage)
    seen: set[str] = set()
    done = threading.Event()

    def watch():  # what the workers wrote, while they run
        while not done.is_set():
            try:
                seen.update(p for p in fs.find(path) if "/checkpoint_" in p)
                fs.invalidate_cache()
            except FileNotFoundError:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = train_policy(config, pairs, ref, tiny_llama_path,
                              output_uri=f"{prefix}/run/model", metrics_uri=str(tmp_path / "m.jsonl"),
                              storage_path=train_dir, run_name="s3-checkpoints")
    finally:
        done.set()
        watcher.join(timeout=10)
    assert result["steps"] == 6
    assert any(p.endswith("trainer_state.json") for p in seen), sorted(seen)[:10]
    fs.invalidate_cache()
    run_dir = f"{path}/s3-checkpoints"
    left = fs.find(run_dir) if fs.exists(run_dir) else []
    # A finished run keeps no resume checkpoint (at most the empty directory marker pyarrow made).
    assert [p for p in left if p.rstrip("/") != run_dir] == []
