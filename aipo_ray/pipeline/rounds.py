"""Sampling rounds: more prompts until `pairs.target` pairs survive the pair rules.

The paper counts its data in pairs (20K per iteration), but what a run controls is prompts:
self-instruct's filters, truncated or tied candidates and the pair rules each drop some, so a
fixed number of prompts gives a number of pairs known only afterwards. With `pairs.target` set,
the data stages of an iteration (ROUND_STAGES: self_instruct → prompts → generations →
rankings → pairs) run in rounds:

- round 1 with the config's own sizes (`self_instruct.num_instructions`, or
  `prompts.per_iteration` when self-instruct is off);
- while fewer than `target` pairs survived and rounds are left, round r + 1 with as many new
  prompts as the yield so far (pairs per prompt) says the missing pairs need, plus a margin;
  new means never taken by an earlier round of the iteration: self-instruct's pool and its
  near-duplicate filter see them, and a fixed pool skips them;
- then `GatherStage`s write the iteration's own `self_instruct`, `prompts`, `generations`,
  `rankings` and `pairs` tables from the rounds' (one part per round), `pairs` cut at the first
  `target`; everything after (reference log-probs, training, the report) reads those, as in a
  run without rounds.

Each round's tables live under `iter_NNN/rounds/rr/` with their own `_SUCCESS` and fingerprint
(the round number, and the prompts of the earlier rounds, are part of it), so a stopped run
resumes inside any round, and the round sizes, computed from finished rounds only, come out the
same on every resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.console import console
from aipo_ray.storage.schemas import PROMPTS

from .stage import ROUND_STAGES, Stage, StageContext, StageError, StageResult, round_table

log = logging.getLogger(__name__)

# A round asks for this many more prompts than the yield so far says it needs: yields vary.
MARGIN = 1.1
# A yield below this (or none yet) is taken as this, so one bad round cannot ask for millions.
MIN_YIELD = 0.1


class PoolExhausted(StageError):
    """A fixed prompt pool has no prompt left that an earlier round did not take."""


def split_rounds(chain: Sequence[Stage]) -> tuple[list[Stage], list[Stage]]:
    """(the leading data stages that run once per round, the rest of the chain)."""
    k = 0
    while k < len(chain) and chain[k].name in ROUND_STAGES:
        k += 1
    data, rest = list(chain[:k]), list(chain[k:])
    if not data or data[-1].name != "pairs":
        raise ValueError("pairs.target needs a chain that starts with the data stages and "
                         f"ends them with 'pairs'; got {[s.name for s in chain]}")
    return data, rest


def prompts_needed(target: int, pairs: int, prompts: int) -> int:
    """New prompts for the next round: the missing pairs over the yield so far, with a margin."""
    yield_ = max(pairs / prompts if prompts else 0.0, MIN_YIELD)
    return max(1, math.ceil((target - pairs) / yield_ * MARGIN))


def sized_for(config: RunConfig, prompts: int) -> RunConfig:
    """`config` asking for `prompts` new prompts: self-instruct's count, or the pool slice."""
    if config.self_instruct.enabled:
        section = config.self_instruct.model_copy(update={"num_instructions": prompts})
        return config.model_copy(update={"self_instruct": section})
    section = config.prompts.model_copy(update={"per_iteration": prompts})
    return config.model_copy(update={"prompts": section})


def earlier_round_prompts(ctx: StageContext) -> pa.Table:
    """The prompts that rounds 1..r-1 of this iteration took (empty outside later rounds)."""
    tables = [ctx.in_round(r).read("prompts").select(PROMPTS.names) for r in range(1, ctx.round)]
    return pa.concat_tables(tables) if tables else PROMPTS.empty_table()


RunChain = Callable[[Sequence[Stage], StageContext], dict[str, dict[str, Any]]]


def run_rounds(data: Sequence[Stage], ctx: StageContext, run_chain: RunChain) -> int:
    """Run the data stages round after round until `pairs.target` pairs survived or
    `pairs.max_rounds` ran (or a fixed pool ran dry); returns the number of finished rounds."""
    cfg = ctx.config.pairs
    target = cfg.target
    assert target is not None
    pairs = prompts = 0
    config = ctx.config
    finished = 0
    for r in range(1, cfg.max_rounds + 1):
        if r > 1:
            config = sized_for(ctx.config, prompts_needed(target, pairs, prompts))
            console.info("  round %d: %d of %d pairs so far; sampling %d more prompts", r, pairs,
                         target, _asked(config))
        try:
            records = run_chain(data, ctx.in_round(r, config))
        except PoolExhausted as e:
            console.warning("iteration %d: %s; training on %d pairs of the %d wanted",
                            ctx.iteration, e, pairs, target)
            return finished
        finished = r
        pairs += int(records["pairs"]["rows_out"])
        prompts += int(records["prompts"]["rows_out"])
        if pairs >= target:
            return finished
    console.warning("iteration %d: %d pairs after %d rounds (pairs.max_rounds), %d wanted; "
                    "training on those", ctx.iteration, pairs, finished, target)
    return finished


def _asked(config: RunConfig) -> int:
    if config.self_instruct.enabled:
        return config.self_instruct.num_instructions
    return config.prompts.per_iteration or 0


class GatherStage(Stage):
    """The iteration's table `name` from its `rounds` sampling rounds, one part per round;
    for `pairs`, the first `pairs.target` pairs in round order."""

    def __init__(self, name: str, rounds: int):
        self.name = name
        self.rounds = rounds
        self.inputs = tuple(round_table(r, name) for r in range(1, rounds + 1))
        self.config_keys = ("pairs.target",) if name == "pairs" else ()

    def run(self, ctx: StageContext) -> StageResult:
        limit = ctx.config.pairs.target if self.name == "pairs" else None
        seen: dict[str, int] = {}
        rows_in = rows_out = 0
        per_round = []
        for r, source in enumerate(self.inputs, start=1):
            table = ctx.read(source)
            rows_in += table.num_rows
            if limit is not None:
                table = table.slice(0, max(0, limit - rows_out))
            if self.name in ("prompts", "pairs"):  # one row per prompt, across all rounds
                for pid in table.column("prompt_id").to_pylist():
                    if pid in seen:
                        raise StageError(f"iteration {ctx.iteration}: prompt {pid} is in rounds "
                                         f"{seen[pid]} and {r} of {self.name!r}")
                    seen[pid] = r
            ctx.write(self.name, table, part=r - 1)
            rows_out += table.num_rows
            per_round.append(table.num_rows)
        return StageResult(rows_in=rows_in, rows_out=rows_out,
                           extra={"rounds": self.rounds, "rows_per_round": per_round,
                                  **({"surplus": rows_in - rows_out} if limit else {})})
