"""Issue 7's "done when": a real 2-iteration tiny run, then `aipo report`, `aipo eval` and
`aipo serve` (as a subprocess, stopped with SIGTERM) answering from models/iter_002."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from aipo_ray.cli import main
from aipo_ray.config import RunConfig
from aipo_ray.pipeline.driver import run

from .checks import assert_stats_match_parquet
from .test_report import ALL_PLOTS, embedded_sections, non_blank

REPO = Path(__file__).resolve().parents[2]
SEED = [f"Write a short note about topic number {i}." for i in range(8)]
HELD_OUT = ["Say something about rivers.", "Describe a cat.", "What is two plus two?"]


def _jsonl(path: Path, prompts: list[str]) -> str:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_cluster, tiny_llama_path):
    root = tmp_path_factory.mktemp("e2e")
    config = RunConfig.model_validate({
        "name": "e2e", "run_dir": str(root / "run"), "iterations": 2,
        "model": {"path": tiny_llama_path},
        "prompts": {"sources": [{"path": _jsonl(root / "seed.jsonl", SEED)}]},
        "self_instruct": {"enabled": False},
        "generation": {"backend": "hf", "num_candidates": 3, "max_tokens": 12, "batch_size": 8,
                       "temperature": 1.0},
        "ranking": {"backend": "callable", "callable": "tests.report.judges:longer_is_better"},
        "pairs": {"drop_truncated": False},
        "training": {"num_workers": 1, "global_batch_size": 4, "micro_batch_size": 2,
                     "learning_rate": 1e-4, "max_prompt_length": 64, "max_response_length": 16},
        "eval": {"prompts": _jsonl(root / "held_out.jsonl", HELD_OUT), "max_tokens": 8,
                 "bootstrap_samples": 200},
        "ray": {"num_cpus": 2, "object_store_memory": 200_000_000},
    })
    summary = run(config)
    assert summary.latest_model == "iter_002"
    return root / "run"


@pytest.mark.slow
def test_report_eval_and_serve_after_a_two_iteration_run(tiny_run, ray_cluster, capsys):
    for it in (1, 2):
        stats = assert_stats_match_parquet(tiny_run, it)
        assert stats["training"]["steps"] >= 1 and "loss" in stats["training"]["metrics"]

    assert main(["eval", str(tiny_run)]) == 0
    evaluation = json.loads((tiny_run / "eval.json").read_text())
    assert [c["kind"] for c in evaluation["comparisons"]] == ["vs_previous", "vs_previous", "vs_base"]
    for c in evaluation["comparisons"]:
        assert c["n"] == 3 and c["win_rate_ci"][0] <= c["win_rate"] <= c["win_rate_ci"][1]

    assert main(["report", str(tiny_run)]) == 0
    page = (tiny_run / "report" / "index.html").read_text()
    assert embedded_sections(page) == ALL_PLOTS | {"win_rate"}
    for key in ALL_PLOTS | {"win_rate"}:
        assert non_blank((tiny_run / "report" / f"{key}.png").read_bytes()), key
    capsys.readouterr()

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), AIPO_SERVE_TOKEN="e2e-token",
               RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aipo_ray.cli", "serve", str(tiny_run / "models" / "iter_002"),
         f"serve.port={port}", "serve.cpus_per_replica=0.5", "ranking.cpus_per_replica=0.25"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       headers={"Authorization": "Bearer e2e-token"},
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "iter_002" and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped serving" in out
