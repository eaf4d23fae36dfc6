"""Running one stage exactly once per fingerprint.

`run_stage` owns the bookkeeping: it skips a stage whose `_SUCCESS` fingerprint matches, checks
its resource asks against the cluster, clears stale or half-written output before a rerun, and
writes `_SUCCESS` last. A `resumable` stage killed mid-way keeps the shards it had committed when
it runs again with the same fingerprint (`_STARTED` records which fingerprint they belong to).
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from datetime import datetime, timezone
from typing import Any

from aipo_ray.console import console
from aipo_ray.generation.engines import release_engines
from aipo_ray.storage import clear_directory, with_retries, write_success

from .fingerprint import digest, identity_payload
from .stage import Stage, StageContext, StageError, StageResult

log = logging.getLogger(__name__)

STARTED = "_STARTED"
# How long a failed stage waits for its shared engines to stop cleanly before they are killed.
FAILED_RELEASE_TIMEOUT_S = 15.0


def is_done(stage: Stage, ctx: StageContext) -> bool:
    rec = ctx.success(stage.name)
    return rec is not None and rec.get("fingerprint") == digest(identity_payload(stage, ctx))


def run_stage(stage: Stage, ctx: StageContext, force: bool = False) -> dict[str, Any]:
    """Run `stage` unless its valid `_SUCCESS` says it is done; return its `_SUCCESS` record."""
    where = f"iteration {ctx.iteration} stage {ctx.table_name(stage.name)!r}"
    payload = identity_payload(stage, ctx)
    fp = digest(payload)
    done = ctx.success(stage.name)
    if done is not None and done.get("fingerprint") == fp and not force:
        log.info("%s: done (valid _SUCCESS), skipping", where)
        return {**done, "skipped": True}
    shared = ctx.shared
    if shared is None or not stage.reusable or force:
        return _execute(stage, ctx, payload, fp, force, where)
    with shared.claim(fp):  # an equal stage of another run finishes first, then is taken
        taken = shared.take(stage, ctx, fp)
        if taken is None:
            return _execute(stage, ctx, payload, fp, force, where)
        console.info("  %-14s reused   from %s", _shown(stage, ctx), taken["reused_from"])
        return taken


def _execute(stage: Stage, ctx: StageContext, payload: dict[str, Any], fp: str, force: bool,
             where: str) -> dict[str, Any]:
    _release_engines_for(stage, ctx)
    _check_resources(stage, ctx)
    directory = ctx.stage_path(stage.name)
    _prepare_directory(stage, ctx, directory, fp, force, where)
    log.info("%s: running", where)
    console.info("  %-14s running", _shown(stage, ctx))
    started = time.time()
    try:
        result = stage.run(ctx)
    except BaseException:
        # A failed stage may have left an engine hung or half started: no long wait for it.
        release_engines(timeout_s=FAILED_RELEASE_TIMEOUT_S)
        raise
    seconds = time.time() - started
    _pause_for_tests(stage.name, where)
    _check_rejected_fraction(result, ctx.config.max_bad_row_fraction, where, directory)
    record = {
        "stage": stage.name, "iteration": ctx.iteration, **_round_of(stage, ctx),
        "fingerprint": fp, "identity": payload,
        "rows_in": result.rows_in, "rows_out": result.rows_out,
        "rejected": dict(result.rejected), "rejected_total": result.rejected_total,
        "seconds": round(seconds, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": result.extra,
    }
    with_retries(lambda: write_success(ctx.run_dir.fs, directory, record), f"mark {where} done",
                 ctx.run_dir.storage)
    log.info("%s: done in %.1fs (%d in, %d out, %d rejected)", where, seconds, result.rows_in,
             result.rows_out, result.rejected_total)
    rejected = f", {result.rejected_total} rejected" if result.rejected_total else ""
    console.info("  %-14s done     %d → %d rows%s  %.1fs", _shown(stage, ctx), result.rows_in,
                 result.rows_out, rejected, seconds)
    return record


def _round_of(stage: Stage, ctx: StageContext) -> dict[str, int]:
    return {"round": ctx.round} if ctx.in_sampling_round(stage.name) else {}


def _shown(stage: Stage, ctx: StageContext) -> str:
    """The stage's name on the console: with its round when it runs in a sampling round."""
    return f"{stage.name} r{ctx.round}" if ctx.in_sampling_round(stage.name) else stage.name


def _prepare_directory(stage: Stage, ctx: StageContext, directory: str, fp: str, force: bool,
                       where: str) -> None:
    """Clear what a rerun must not see; keep a resumable stage's shards of the same fingerprint."""
    fs, storage = ctx.run_dir.fs, ctx.run_dir.storage
    marker = posixpath.join(directory, STARTED)
    if stage.resumable and not force and _started_fingerprint(ctx, marker) == fp:
        log.info("%s: resuming the shards a stopped run of the same fingerprint committed", where)
        with_retries(lambda: fs.rm_file(posixpath.join(directory, "_SUCCESS"))
                     if fs.exists(posixpath.join(directory, "_SUCCESS")) else None,
                     f"drop stale _SUCCESS of {where}", storage)
        return
    # Half-written or stale output must go before the rerun, or its rows would be counted twice.
    with_retries(lambda: clear_directory(fs, directory), f"clear {where}", storage)
    with_retries(lambda: (fs.makedirs(directory, exist_ok=True),
                          fs.pipe_file(marker, fp.encode())), f"mark {where} started", storage)


def _started_fingerprint(ctx: StageContext, marker: str) -> str | None:
    fs = ctx.run_dir.fs
    raw = with_retries(lambda: fs.cat_file(marker) if fs.exists(marker) else None,
                       f"read {marker}", ctx.run_dir.storage)
    return raw.decode().strip() if raw else None


def _release_engines_for(stage: Stage, ctx: StageContext) -> None:
    """Shared vLLM engines (generation/engines.py) hold CPUs/GPUs: a stage that asks for
    resources and does not generate on them gets them back first (and the resource check below
    then sees a cluster without them). Stages that generate with θ_t keep them."""
    if not stage.shares_engine and stage.resource_asks(ctx.config):
        release_engines()


def _check_resources(stage: Stage, ctx: StageContext) -> None:
    """Fail within seconds when the cluster can never meet the stage's asks (clusters change
    between stages, so this runs again before every stage that will start actors)."""
    asks = stage.resource_asks(ctx.config)
    if not asks:
        return
    import ray

    if ray.is_initialized():
        from aipo_ray.resources import check_cluster

        check_cluster(asks)


# Fault-injection hook (tests/reliability): with AIPO_TEST_PAUSE_IN_STAGE=<stage name> the driver
# stops after that stage wrote its output and before its `_SUCCESS`, the widest window a crash can
# hit, so a test can SIGKILL it there. Unset in every real run.
PAUSE_ENV = "AIPO_TEST_PAUSE_IN_STAGE"


def _pause_for_tests(name: str, where: str) -> None:
    if os.environ.get(PAUSE_ENV) == name:
        log.warning("%s: paused before _SUCCESS (%s)", where, PAUSE_ENV)
        time.sleep(3600)


def _check_rejected_fraction(result: StageResult, limit: float, where: str, directory: str) -> None:
    if result.rows_in and result.rejected_total / result.rows_in > limit:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(result.rejected.items()))
        raise StageError(
            f"{where}: rejected {result.rejected_total} of {result.rows_in} rows "
            f"({result.rejected_total / result.rows_in:.0%} > max_bad_row_fraction {limit:.0%}); "
            f"reasons: {reasons}; see {directory}/_rejected/"
        )
