"""The Stage protocol and the one function that runs a stage exactly once per input.

A stage reads finished tables of its iteration, writes its own table under
`<run>/iter_NNN/<stage.name>/`, and returns counts. `run_stage` owns the bookkeeping: it skips a
stage whose `_SUCCESS` fingerprint matches, clears a half-written one before re-running it, and
writes `_SUCCESS` last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.storage import RunDir, clear_directory, with_retries, write_success

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage refused its input or failed; the message says which stage and iteration."""


class DamagedInput(RuntimeError):
    """A stage found the output of an earlier stage damaged although that stage's `_SUCCESS` is
    valid (storage lost or corrupted a file after the fact). The driver reruns `stage` and
    everything after it, once; a second time it is raised."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"output of stage {stage!r} is damaged: {reason}")
        self.stage = stage


@dataclass
class StageResult:
    """What a stage reports; `rejected` counts refused rows per reason."""

    rows_in: int
    rows_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class StageContext:
    """Everything a stage may read: the config, the run directory and which iteration this is.

    Iteration i (1-based) generates with θ_{i-1} (`policy_uri`, also the reference) and trains θ_i.
    """

    config: RunConfig
    run_dir: RunDir
    iteration: int

    @property
    def policy_uri(self) -> str:
        return self.run_dir.model_uri(self.iteration - 1)

    @property
    def output_model_uri(self) -> str:
        return self.run_dir.model_uri(self.iteration)

    def stage_path(self, stage: str) -> str:
        return self.run_dir.stage_path(self.iteration, stage)

    def read(self, stage: str) -> pa.Table:
        """A finished input table of this iteration."""
        return self.run_dir.read_stage_table(self.iteration, stage)

    def write(self, stage: str, table: pa.Table, part: int = 0) -> str:
        return self.run_dir.write_stage_table(self.iteration, stage, table, part)

    def write_rejected(self, stage: str, table: pa.Table, part: int = 0) -> None:
        self.run_dir.write_rejected(self.iteration, stage, table, part)


@runtime_checkable
class Stage(Protocol):
    """One step of an iteration. `name` is also its output directory under `iter_NNN/`."""

    name: ClassVar[str] | str
    inputs: ClassVar[tuple[str, ...]] | tuple[str, ...]

    def run(self, ctx: StageContext) -> StageResult: ...


# Keys that say where and how long to run, never what a stage computes: changing them (adding
# iterations, moving the run, resizing the cluster) must not invalidate finished stages.
_NOT_OUTPUT_KEYS = frozenset({"name", "run_dir", "iterations", "ray", "storage", "eval", "serve"})


def stage_config(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """The config a stage's output depends on: its `config_keys` sections, or every section that
    can change results when it declares none."""
    keys = getattr(stage, "config_keys", None)
    dump = ctx.config.to_public_dict()
    if keys is None:
        return {k: v for k, v in dump.items() if k not in _NOT_OUTPUT_KEYS}
    return {k: dump.get(k) for k in keys}


def fingerprint(stage: Stage, ctx: StageContext) -> str:
    """Hash of what the stage's output depends on: its inputs' fingerprints, θ_t and its config.

    A change to any of them makes the driver redo the stage instead of trusting old output.
    """
    inputs = {}
    for name in stage.inputs:
        rec = ctx.run_dir.stage_success(ctx.iteration, name)
        inputs[name] = rec.get("fingerprint") if rec else None
    extra = stage.fingerprint_extra(ctx) if hasattr(stage, "fingerprint_extra") else None
    payload = {
        "stage": stage.name, "iteration": ctx.iteration, "inputs": inputs,
        "policy": ctx.policy_uri, "config": stage_config(stage, ctx), "extra": extra,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def is_done(stage: Stage, ctx: StageContext) -> bool:
    rec = ctx.run_dir.stage_success(ctx.iteration, stage.name)
    return rec is not None and rec.get("fingerprint") == fingerprint(stage, ctx)


def run_stage(stage: Stage, ctx: StageContext, force: bool = False) -> dict[str, Any]:
    """Run `stage` unless its valid `_SUCCESS` says it is done; return its `_SUCCESS` record."""
    where = f"iteration {ctx.iteration} stage {stage.name!r}"
    fp = fingerprint(stage, ctx)
    done = ctx.run_dir.stage_success(ctx.iteration, stage.name)
    if done is not None and done.get("fingerprint") == fp and not force:
        log.info("%s: done (valid _SUCCESS), skipping", where)
        return {**done, "skipped": True}
    directory = ctx.stage_path(stage.name)
    # Half-written or stale output must go before the rerun, or its rows would be counted twice.
    with_retries(lambda: clear_directory(ctx.run_dir.fs, directory), f"clear {where}",
                 ctx.run_dir.storage)
    log.info("%s: running", where)
    started = time.time()
    result = stage.run(ctx)
    seconds = time.time() - started
    _pause_for_tests(stage.name, where)
    _check_rejected_fraction(result, ctx.config.max_bad_row_fraction, where, directory)
    record = {
        "stage": stage.name, "iteration": ctx.iteration, "fingerprint": fp,
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
    return record


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
