"""Hangs: a ranking batch that exceeds `ranking.timeout_s` is retried, then reported with its
prompt ids, and the stage fails instead of waiting forever (aipo_ray/watchdog.py). The hf
generation actor uses the same watchdog with `generation.timeout_s` / `generation.max_retries`."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from aipo_ray.config import load_config
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stages.rank import RankStage
from aipo_ray.storage import RunDir, make_prompt_id, write_success
from aipo_ray.watchdog import BatchTimeoutError, call_with_deadline
from tests.pipeline.test_rank_stage import generations

pytestmark = pytest.mark.reliability

ROWS = [("fine?", 0, "a"), ("fine?", 1, "bb"), ("hang?", 0, "c"), ("hang?", 1, "dd")]


def hangs_on(prompt_to_hang: str, marker_dir: str | None, prompt: str, candidates: list[str]):
    """Shortest wins; hangs on `prompt_to_hang`: forever, or only the first time when
    `marker_dir` is given (a marker file remembers the first attempt across threads)."""
    if prompt == prompt_to_hang:
        marker = Path(marker_dir or "/nonexistent") / "first-attempt"
        if marker_dir is None or not marker.exists():
            if marker_dir is not None:
                marker.write_text("hung once")
            time.sleep(600)
    return [-float(len(c)) for c in candidates]


def _context(tmp_path, timeout_s: float, max_retries: int) -> StageContext:
    config = load_config(None, ["model.path=unused", f"run_dir={tmp_path / 'run'}",
                                "ranking.batch_size=1", f"ranking.timeout_s={timeout_s}",
                                f"ranking.max_retries={max_retries}"])
    ctx = StageContext(config=config, run_dir=RunDir(str(tmp_path / "run")), iteration=1)
    ctx.write("generations", generations(ROWS))
    write_success(ctx.run_dir.fs, ctx.stage_path("generations"), {"fingerprint": "g"})
    return ctx


def test_a_batch_that_always_hangs_is_retried_then_fails_naming_its_prompt(tmp_path, ray_cluster):
    ctx = _context(tmp_path, timeout_s=2, max_retries=1)
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        run_stage(RankStage(ranker=functools.partial(hangs_on, "hang?", None)), ctx)
    assert time.monotonic() - started < 120  # 2 attempts × 2 s, plus actor start; never forever
    message = str(info.value)
    assert "exceeded timeout_s=2 on 2 attempts" in message
    assert make_prompt_id("hang?") in message and make_prompt_id("fine?") not in message
    assert ctx.run_dir.stage_success(1, "rankings") is None


def test_a_batch_that_hangs_once_succeeds_on_its_retry(tmp_path, ray_cluster):
    ctx = _context(tmp_path, timeout_s=2, max_retries=1)
    markers = tmp_path / "markers"
    markers.mkdir()
    record = run_stage(RankStage(ranker=functools.partial(hangs_on, "hang?", str(markers))), ctx)
    assert (markers / "first-attempt").exists()  # the first attempt did hang
    table = {r["prompt_id"]: r for r in ctx.read("rankings").to_pylist()}
    assert sorted(table) == sorted({make_prompt_id("fine?"), make_prompt_id("hang?")})
    assert table[make_prompt_id("hang?")]["best_idx"] == 0
    assert record["rows_out"] == 2


def test_call_with_deadline_passes_errors_and_values_through():
    assert call_with_deadline(lambda: 7, 5, 0, ["p"], "x") == 7
    with pytest.raises(KeyError, match="boom"):
        call_with_deadline(lambda: {}["boom"], 5, 2, ["p"], "x")
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.5)

    with pytest.raises(BatchTimeoutError, match=r"2 prompts exceeded timeout_s=0.1 on 3 attempts; "
                                                r"prompt ids: a, b"):
        call_with_deadline(slow, 0.1, 2, ["a", "b"], "ranking")
    assert len(calls) == 3


def test_a_reference_batch_that_hangs_fails_ref_logps_within_its_timeout(
    tmp_path, ray_cluster, tiny_llama_path, monkeypatch
):
    """reference.timeout_s is honoured: the scorer's test hook hangs the batch of one pair."""
    import pyarrow as pa

    from aipo_ray.models import POINTER
    from aipo_ray.pipeline.stages.ref_logps import RefLogpsStage
    from aipo_ray.storage.schemas import PAIRS
    from aipo_ray.training.reference import HANG_ENV

    root = tmp_path / "run"
    config = load_config(None, [f"model.path={tiny_llama_path}", f"run_dir={root}",
                                "reference.batch_size=1", "reference.timeout_s=3",
                                "reference.max_retries=0"])
    ctx = StageContext(config=config, run_dir=RunDir(str(root)), iteration=1)
    ctx.run_dir.write_json(f"models/iter_000/{POINTER}", {"path": tiny_llama_path})
    ids = [make_prompt_id(p) for p in ("fine?", "hang?")]
    ctx.write("pairs", pa.table({"prompt_id": ids, "prompt": ["fine?", "hang?"],
                                 "chosen": ["yes", "no"], "rejected": ["n", "y"],
                                 "chosen_score": [1.0, 1.0], "rejected_score": [0.0, 0.0]},
                                schema=PAIRS))
    write_success(ctx.run_dir.fs, ctx.stage_path("pairs"), {"fingerprint": "p"})
    monkeypatch.setenv(HANG_ENV, ids[1])

    started = time.monotonic()
    with pytest.raises(Exception) as info:
        run_stage(RefLogpsStage(), ctx)
    assert time.monotonic() - started < 120  # 3 s, plus actor start and model load
    message = str(info.value)
    assert "reference: a batch of 1 prompts exceeded timeout_s=3 on 1 attempts" in message
    assert ids[1] in message and ids[0] not in message
    assert ctx.run_dir.stage_success(1, "ref_logps") is None
