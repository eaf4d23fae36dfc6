"""`aipo serve s3://.../models/iter_NNN`: config from the run's run.json on S3, and each replica
downloads and verifies the checkpoint with the caller's credentials."""

from __future__ import annotations

import httpx
import pytest

from aipo_ray.config import RunConfig
from aipo_ray.serve.runner import serve_checkpoint, serve_config
from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import commit_checkpoint


@pytest.mark.slow
def test_serves_a_checkpoint_committed_to_s3(s3_storage, ray_cluster, tiny_llama_path):
    storage, prefix = s3_storage
    rd = RunDir(prefix, storage)
    run = RunConfig.model_validate({
        "model": {"path": tiny_llama_path}, "serve": {"backend": "hf", "cpus_per_replica": 0.5},
        "ranking": {"backend": "callable", "callable": "tests.report.judges:longer_is_better",
                    "cpus_per_replica": 0.25},
    })
    rd.write_json("run.json", {"config": run.to_public_dict()})
    uri = commit_checkpoint(tiny_llama_path, rd, 2)
    config = serve_config(uri, storage=storage, overrides=["serve.port=0"])
    assert config.storage == storage and config.ranking.backend == "callable"
    app = serve_checkpoint(uri, blocking=False, config=config)
    try:
        r = httpx.post(f"{app.url}/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "iter_002"
        assert r.json()["usage"]["completion_tokens"] >= 1
        r = httpx.post(f"{app.url}/rank", json={"prompt": "p", "candidates": ["a", "bbb"]},
                       timeout=60)
        assert r.json()["best_idx"] == 1
    finally:
        app.shutdown()
