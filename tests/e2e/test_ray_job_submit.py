"""Issue 6: `ray job submit -- python pipelines/run_iterative.py` against a `ray start --head`."""

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from aipo_ray.storage import RunDir
from aipo_ray.storage.checkpoint import verify_checkpoint

from .conftest import tiny_run_config
from .processes import REPO, child_env, free_port, kill_group


@pytest.fixture
def ray_head(tmp_path):
    """A head node of our own (never `ray stop`: that would stop every cluster on the machine)."""
    gcs, dashboard, agent_http, agent_grpc, runtime_env_agent, metrics, client = (
        free_port() for _ in range(7)
    )
    # Ray's socket paths live under its temp dir and must stay under 107 bytes: pytest's
    # tmp_path is too deep.
    temp_dir = tempfile.mkdtemp(prefix="aipo-ray-", dir="/tmp")
    ray_bin = Path(sys.executable).parent / "ray"
    log = tmp_path / "head.log"
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--object-store-memory=300000000", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         # Every listener on a free port: the defaults (e.g. the agent's 52365) collide with any
         # other Ray on the machine, and a job agent that cannot bind never takes jobs.
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
         f"--ray-client-server-port={client}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=child_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                kill_group(proc)
                raise AssertionError(f"ray head did not come up:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)
    yield address
    kill_group(proc, signal.SIGTERM)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow  # ~2.5 min; `make test-cluster` submits a job to a three-node cluster
def test_ray_job_submit_runs_an_iteration_on_a_started_cluster(tmp_path, tiny_llama_path, ray_head):
    run_dir = str(tmp_path / "run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_llama_path, run_dir,
                                                     tmp_path / "prompts.jsonl", iterations=1)))
    ray_bin = Path(sys.executable).parent / "ray"
    submit = [str(ray_bin), "job", "submit", "--address", ray_head, "--",
              sys.executable, str(REPO / "pipelines" / "run_iterative.py"), "--config", str(config)]
    # The dashboard answers before the node's job agent registers; until then submit says
    # "No available agent". Bounded: 30 tries, 2 s apart.
    for _ in range(30):
        result = subprocess.run(submit, env=child_env(), capture_output=True, text=True,
                                timeout=900, cwd=REPO)
        if "No available agent" not in result.stdout + result.stderr:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "succeeded" in result.stdout
    rd = RunDir(run_dir)
    assert rd.latest_model() == "iter_001"
    verify_checkpoint(rd.model_uri(1))
