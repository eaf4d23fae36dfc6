"""Helpers to run the driver and a Ray head as separate processes and kill them like a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)  # a child driver must start its own Ray, not join the tests'
    env.update(extra)
    return env


def start_driver(config: Path, log: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """`python pipelines/run_iterative.py --config CONFIG` in its own process group; `env` adds
    variables (e.g. the AIPO_TEST_PAUSE_IN_STAGE hook)."""
    cmd = [sys.executable, str(REPO / "pipelines" / "run_iterative.py"), "--config", str(config),
           *args]
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(**(env or {})), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """SIGKILL the whole process group: the driver and the local Ray it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout_s: float,
             log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n"
                                 f"{log.read_text()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
