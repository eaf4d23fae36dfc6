"""The console's plumbing without a run: Ray's prefixed driver lines are routed to the log,
ours stay on the terminal; progress lines and snapshots."""

from __future__ import annotations

import io

from aipo_ray.console import StageProgress, _RayLinesToLog


def test_ray_prefixed_lines_go_to_the_log_and_ours_to_the_terminal():
    terminal, log = io.StringIO(), io.StringIO()
    out = _RayLinesToLog(terminal, log)
    print("\x1b[33m(raylet)\x1b[0m Task EngineActor.info failed.", file=out)
    print("\x1b[36m(MapWorker(MapBatches(DeadlineActor)) pid=123)\x1b[0m loading", file=out)
    print("run finished in 12s: runs/x", file=out)
    out.write("  latest model: ")
    out.write("iter_002\n")
    out.write("(pid=9) no newline yet")
    out.flush()
    assert terminal.getvalue() == "run finished in 12s: runs/x\n  latest model: iter_002\n"
    assert log.getvalue().count("\n") == 2 and log.getvalue().endswith("no newline yet")


def test_progress_counts_rows_done_before_a_restart_and_estimates_the_rest():
    reports = []
    progress = StageProgress("  generations", total=10, done=4, report=reports.append,
                             report_every_s=0.0, unit="prompts")
    progress.started -= 10.0  # 10 s ago
    progress.update(2)
    snapshot = reports[-1]
    assert snapshot["done"] == 6 and snapshot["total"] == 10 and snapshot["unit"] == "prompts"
    # 2 prompts in 10 s this run (the 4 committed before do not count towards the rate).
    assert abs(snapshot["per_s"] - 0.2) < 0.01 and abs(snapshot["eta_s"] - 20.0) < 1.0
    assert progress.line().startswith("  generations  6/10 prompts, 0.2 prompts/s")


def test_console_lines_follow_stderr_after_the_caller_closed_the_one_of_setup(monkeypatch):
    """An in-process `aipo` (a test, a notebook) set up logging on a stderr that its caller
    later closes; a later console line goes to the stderr of the moment, with no logging error."""
    import logging
    import sys

    from aipo_ray.console import console, setup_logging

    root = logging.getLogger()
    before = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging()
        console.info("iteration %d/%d", 1, 2)
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        console.info("iteration %d/%d", 2, 2)
    finally:
        for handler in [h for h in root.handlers if h not in before[0]]:
            root.removeHandler(handler)
        root.setLevel(before[1])
    assert second.getvalue() == "iteration 2/2\n"
