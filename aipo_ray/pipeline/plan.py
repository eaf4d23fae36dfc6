"""Before a run starts: which finished stages it will redo, and why.

A stage is redone when its own fingerprint changed (a config key, a model, its version), or
when something it reads will be redone: an input stage, an earlier iteration's stage it reads
(`history_inputs`), or θ_t, when the commit of iteration t-1 will be redone. The last two are
known only by propagation: θ_t's new identity exists once it is trained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aipo_ray.config import RunConfig
from aipo_ray.storage import RunDir

from .fingerprint import digest, explain_change, identity_payload
from .stage import POLICY, ROUND_STAGES, Stage, StageContext

log = logging.getLogger(__name__)


@dataclass
class PlannedStage:
    iteration: int
    stage: str
    finished: bool  # has a `_SUCCESS` from an earlier run
    reasons: list[str] = field(default_factory=list)  # empty: skipped

    @property
    def will_run(self) -> bool:
        return bool(self.reasons)


def plan_run(config: RunConfig, factory: Callable[[RunConfig, int], Sequence[Stage]],
             run_dir: RunDir, iterations: int) -> list[PlannedStage]:
    """One entry per stage of iterations 1..`iterations`, in the order they would run."""
    redone: set[tuple[int, str]] = set()
    recommitted: set[int] = set()  # iterations whose model will be committed again
    plan = []
    for iteration in range(1, iterations + 1):
        it_config = config.for_iteration(iteration)
        ctx = StageContext(config=it_config, run_dir=run_dir, iteration=iteration)
        for stage in factory(it_config, iteration):
            # With sampling rounds the data stages are planned as round 1 (the later rounds'
            # sizes are known only once the earlier ones finish).
            in_rounds = it_config.pairs.target is not None and stage.name in ROUND_STAGES
            entry = _plan_stage(stage, ctx.in_round(1) if in_rounds else ctx, redone,
                                recommitted)
            if entry.will_run:
                redone.add((iteration, stage.name))
                if stage.commits_model:
                    recommitted.add(iteration)
            plan.append(entry)
    return plan


def _plan_stage(stage: Stage, ctx: StageContext, redone: set[tuple[int, str]],
                recommitted: set[int]) -> PlannedStage:
    it = ctx.iteration
    record = ctx.success(stage.name)
    entry = PlannedStage(iteration=it, stage=ctx.table_name(stage.name),
                         finished=record is not None)
    entry.reasons += [f"input {name} will be redone" for name in stage.inputs
                      if (it, name) in redone]
    entry.reasons += [f"{name} of iteration {j} will be redone" for name in stage.history_inputs
                      for j in range(1, it) if (j, name) in redone]
    if POLICY in stage.models(ctx) and it - 1 in recommitted:
        entry.reasons.append(f"θ_{it - 1} will be recommitted")
    if entry.reasons:
        return entry
    if record is None:
        entry.reasons.append("not run yet")
        return entry
    try:
        payload = identity_payload(stage, ctx)
    except Exception as e:  # a model or input not readable yet: the run will find out
        entry.reasons.append(f"cannot be fingerprinted yet ({e})")
        return entry
    if digest(payload) != record.get("fingerprint"):
        entry.reasons += explain_change(record.get("identity"), payload)
    return entry


def log_plan(plan: list[PlannedStage]) -> None:
    """One line per finished stage that will be redone, then the totals."""
    for entry in plan:
        if entry.finished and entry.will_run:
            log.warning("will redo iteration %d stage %r: %s", entry.iteration, entry.stage,
                        "; ".join(entry.reasons))
    done = sum(not e.will_run for e in plan)
    if done:
        log.info("%d of %d stages are done and will be skipped", done, len(plan))
