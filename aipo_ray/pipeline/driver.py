"""The recipe: T iterations of Algorithm 1, each a chain of stages, resumable at any point.

Iteration i generates with θ_{i-1} and commits θ_i; θ_i is the policy and the reference of
iteration i+1. Every stage is skipped when its `_SUCCESS` is valid, so calling `run` again on the
same run directory continues where a crashed or stopped run left off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from aipo_ray import __version__
from aipo_ray.config import RunConfig, load_config
from aipo_ray.console import console, log_to_run_dir
from aipo_ray.generation.engines import release_engines
from aipo_ray.models import POINTER
from aipo_ray.resources import InfeasibleResourceError, check_cluster, stage_asks
from aipo_ray.runtime import init_ray
from aipo_ray.storage import RUN_JSON, RunDir

from .fingerprint import leaf_changes
from .plan import log_plan, plan_run
from .registry import default_stages
from .reuse import SharedStages
from .rounds import GatherStage, run_rounds, split_rounds
from .runner import run_stage
from .stage import DamagedInput, Stage, StageContext

log = logging.getLogger(__name__)

StageFactory = Callable[[RunConfig, int], Sequence[Stage]]

__all__ = ["RunSummary", "default_stages", "prepare_run_dir", "resume", "run", "run_iteration"]


@dataclass
class RunSummary:
    run_dir: str
    iterations: list[dict[str, Any]] = field(default_factory=list)
    latest_model: str | None = None
    seconds: float = 0.0


def _as_factory(stages: Sequence[Stage] | StageFactory | None) -> StageFactory:
    if stages is None:
        return default_stages
    if callable(stages) and not isinstance(stages, Sequence):
        return stages
    fixed = list(stages)
    return lambda config, iteration: fixed


def prepare_run_dir(config: RunConfig) -> RunDir:
    """Write run.json and the base-model pointer models/iter_000.

    run.json's `config` is the latest config the run was started with (what `aipo resume` uses);
    each change to it is appended to `history` with its time and the keys that changed.
    """
    run_dir = RunDir(config.resolved_run_dir, config.storage)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    public = config.to_public_dict()
    if not run_dir.exists(RUN_JSON):
        run_dir.write_json(RUN_JSON, {"config": public, "aipo_ray_version": __version__,
                                      "started_at": now, "history": []})
    else:
        meta = run_dir.read_json(RUN_JSON)
        changes = leaf_changes(meta.get("config", {}), public)
        if changes:
            console.info("config of %s changed: %s", run_dir.uri,
                     "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changes.items()))
            meta.setdefault("history", []).append({"at": now, "changes": changes,
                                                   "aipo_ray_version": __version__})
            meta["config"] = public
            run_dir.write_json(RUN_JSON, meta)
    pointer = f"models/{run_dir.model_name(0)}/{POINTER}"
    if not run_dir.exists(pointer):
        run_dir.write_json(pointer, {"path": config.model.path})
    return run_dir


def run(
    config: RunConfig | str | Path,
    stages: Sequence[Stage] | StageFactory | None = None,
    *,
    overrides: list[str] | None = None,
    run_dir: str | None = None,
    iterations: int | None = None,
    shared: SharedStages | None = None,
) -> RunSummary:
    """Run (or resume) iterations 1..T. `stages` replaces the default chain: a list of stages used
    in every iteration, or a function (config, iteration) -> stages. `shared` lets stages take
    the output of an equal stage (same fingerprint) of another run instead of computing it
    (sweeps)."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config file; edit the RunConfig object instead")
    if run_dir is not None:
        config = config.model_copy(update={"run_dir": run_dir})
    total = iterations or config.iterations
    factory = _as_factory(stages)
    # The log file first, so that what Ray prints while it starts goes there too.
    log_to_run_dir(RunDir(config.resolved_run_dir, config.storage).uri)
    init_ray(config.ray)
    # An ask no node can meet would make Ray wait forever: fail now, before any stage runs (the
    # runner checks each stage again before it starts: clusters change).
    try:
        check_cluster(stage_asks(factory(config, 1), config))
    except InfeasibleResourceError as e:
        log.error("%s", e)  # the log of the attempt says why nothing ran
        raise
    rd = prepare_run_dir(config)
    _announce_logs(rd)
    log_plan(plan_run(config, factory, rd, total))
    summary = RunSummary(run_dir=rd.uri)
    started = time.time()
    try:
        for iteration in range(1, total + 1):
            it_config = config.for_iteration(iteration)  # with the iteration_overrides due by then
            ctx = StageContext(config=it_config, run_dir=rd, iteration=iteration, shared=shared)
            records = run_iteration(list(factory(it_config, iteration)), ctx, total)
            summary.iterations.append({"iteration": iteration, "stages": records})
            release_engines()  # θ_t's engine is done with; the next iteration generates with θ_t+1
    finally:
        release_engines()  # cleanly, whatever happened: no engine process or shared memory left
    summary.latest_model = rd.latest_model()
    summary.seconds = time.time() - started
    log.info("run finished: %s, latest model %s", rd.uri, summary.latest_model)
    return summary


def run_iteration(chain: Sequence[Stage], ctx: StageContext, total: int | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Run one iteration's stages in order; returns their `_SUCCESS` records by stage name.

    With `pairs.target` set, the leading data stages run in sampling rounds first (rounds.py)
    and the iteration's own data tables are gathered from them.

    A stage that finds an earlier stage's output damaged (`DamagedInput`) sends the iteration
    back to that stage, which reruns with everything after it, even where their `_SUCCESS` is
    valid. Once per stage: damage that a rerun does not cure is raised.
    """
    console.info("iteration %d/%s", ctx.iteration, total or "?")
    records: dict[str, dict[str, Any]] = {}
    if ctx.config.pairs.target is not None:
        data, rest = split_rounds(chain)
        rounds = run_rounds(data, ctx, partial(_run_chain, total=total))
        chain = [GatherStage(stage.name, rounds) for stage in data] + rest
    records.update(_run_chain(chain, ctx, total))
    skipped = [name for name, rec in records.items() if rec.get("skipped")]
    if skipped:
        console.info("  %d stages done earlier, skipped: %s", len(skipped), ", ".join(skipped))
    return records


def _run_chain(chain: Sequence[Stage], ctx: StageContext, total: int | None
               ) -> dict[str, dict[str, Any]]:
    names = [stage.name for stage in chain]
    records: dict[str, dict[str, Any]] = {}
    rerun_from: set[str] = set()
    forced_from = len(chain)
    n = 0
    while n < len(chain):
        stage = chain[n]
        log.info("iteration %d/%s, stage %d/%d: %s", ctx.iteration, total or "?", n + 1,
                 len(chain), ctx.table_name(stage.name))
        try:
            records[stage.name] = run_stage(stage, ctx, force=n >= forced_from)
        except DamagedInput as e:
            if e.stage not in names[:n] or e.stage in rerun_from:
                raise
            rerun_from.add(e.stage)
            log.warning("iteration %d, stage %r: %s; rerunning from %r", ctx.iteration,
                        stage.name, e, e.stage)
            n = forced_from = names.index(e.stage)
            continue
        n += 1
    return records


def _announce_logs(rd: RunDir) -> None:
    """Where the detail went: the driver log, and Ray's own (workers, engines, Ray Data)."""
    from aipo_ray.runtime import ray_logs_dir

    path = log_to_run_dir(rd.uri)
    console.info("run %s; logs: %s (Ray: %s)", rd.uri, path, ray_logs_dir())


def resume(run_dir: str, overrides: list[str] | None = None, **kwargs) -> RunSummary:
    """Continue a run from the latest config in its run.json. Credentials are not in run.json: they come from the
    environment (AWS_*), as they did when the run started."""
    from aipo_ray.config import apply_overrides, build_config
    from aipo_ray.config.storage import StorageConfig

    rd = RunDir(run_dir, StorageConfig())
    if not rd.exists(RUN_JSON):
        raise FileNotFoundError(f"{run_dir}: no {RUN_JSON}; is this a run directory?")
    data = rd.read_json(RUN_JSON)["config"]
    data["run_dir"] = run_dir
    config = build_config(apply_overrides(data, overrides or []), source=f"{run_dir}/{RUN_JSON}")
    return run(config, **kwargs)
