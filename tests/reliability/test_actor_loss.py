"""Actor loss: SIGKILL the ranking actor's process mid-stage; Ray Data restarts it and retries
its batch (actor pools default to max_restarts=-1, max_task_retries=-1), and the stage ends with
every prompt_id exactly once and all N scores each."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from aipo_ray.config import load_config
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stages.rank import RankStage
from aipo_ray.storage import RunDir, make_prompt_id, write_success
from tests.pipeline.test_rank_stage import generations

pytestmark = pytest.mark.reliability

PROMPTS = [f"question {i}?" for i in range(8)]
N = 3


def slow_shortest_wins(pid_dir: str, prompt: str, candidates: list[str]) -> list[float]:
    """Records which process ranks, and takes 0.5 s per prompt so a kill lands mid-stage."""
    Path(pid_dir, str(os.getpid())).touch()
    time.sleep(0.5)
    return [-float(len(c)) for c in candidates]


def _kill_first_actor(pid_dir: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pids = [int(p.name) for p in pid_dir.iterdir()]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return
        time.sleep(0.05)


def test_killed_ranking_actor_is_restarted_and_every_prompt_ranked_once(tmp_path, ray_cluster):
    config = load_config(None, ["model.path=unused", f"run_dir={tmp_path / 'run'}",
                                "ranking.batch_size=1"])
    ctx = StageContext(config=config, run_dir=RunDir(str(tmp_path / "run")), iteration=1)
    rows = [(p, j, "x" * (j + 1)) for p in PROMPTS for j in range(N)]
    ctx.write("generations", generations(rows))
    write_success(ctx.run_dir.fs, ctx.stage_path("generations"), {"fingerprint": "g"})
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_actor, args=(pid_dir, killed), daemon=True)
    killer.start()

    record = run_stage(RankStage(ranker=functools.partial(slow_shortest_wins, str(pid_dir))), ctx)

    killer.join(timeout=5)
    assert killed, "no actor was killed"
    survivors = {int(p.name) for p in pid_dir.iterdir()} - set(killed)
    assert survivors, "no replacement actor ranked anything"
    ranked = ctx.read("rankings").to_pylist()
    assert sorted(r["prompt_id"] for r in ranked) == sorted(make_prompt_id(p) for p in PROMPTS)
    assert all(len(r["scores"]) == N and r["best_idx"] == 0 and r["worst_idx"] == N - 1
               for r in ranked)
    assert record["rows_in"] == record["rows_out"] == len(PROMPTS)
