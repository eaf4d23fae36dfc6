"""The stage contract: what a step of an iteration declares, and what it may read and write.

A stage reads finished tables of its iteration (`inputs`), writes its own table under
`<run>/iter_NNN/<name>/` (checked against `schema`), and returns counts. Everything its output
depends on is declared here, so the runtime (runner.py) can fingerprint it by content and skip
it when nothing changed:

- `name` and `version` (bump the version when the stage's code changes what it writes);
- `inputs`: stages of the same iteration; `history_inputs`: stages of every earlier iteration
  (self-instruct's pool grows with the prompts of iterations 1..t-1);
- `models(ctx)`: the models it reads, by role (θ_t is `policy`);
- `config_keys`: config sections or dotted keys (`generation`, `eval.similarity_ngram`);
- `fingerprint_extra(ctx)`: anything else (a user's Python function given directly).

Adding a stage: subclass `Stage` in its own module under `pipeline/stages/` and add the class to
`pipeline/registry.py` (docs/python-api.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.storage import RunDir

if TYPE_CHECKING:
    from aipo_ray.resources import ResourceAsk

    from .reuse import SharedStages

POLICY = "policy"
# How θ_t is read (tokenizer, chat template, dtype): every stage that reads θ_t depends on them.
# `model.path` is not among them: it is θ_0, whose identity the `policy` model already carries.
MODEL_IO_KEYS = ("model.tokenizer", "model.chat_template", "model.dtype", "model.trust_remote_code")


# The data stages that run once per sampling round when `pairs.target` asks for more pairs than
# one round gives (pipeline/rounds.py); their per-round tables are then gathered into the
# iteration's own tables of the same names.
ROUND_STAGES = ("self_instruct", "prompts", "generations", "rankings", "pairs")


def round_table(round: int, stage: str) -> str:
    """The directory of `stage`'s table in sampling round `round`, under `iter_NNN/`."""
    return f"rounds/{round:02d}/{stage}"


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
    # Finished stages of other runs (a sweep's variants) whose output an equal stage may take.
    shared: SharedStages | None = None
    # The sampling round of the data stages (`pairs.target`, pipeline/rounds.py): 0 outside
    # rounds; in round r the tables of ROUND_STAGES live under `iter_NNN/rounds/rr/`.
    round: int = 0

    @property
    def policy_uri(self) -> str:
        return self.run_dir.model_uri(self.iteration - 1)

    @property
    def output_model_uri(self) -> str:
        return self.run_dir.model_uri(self.iteration)

    def in_sampling_round(self, stage: str) -> bool:
        """Whether stage `stage` runs here as part of a sampling round."""
        return bool(self.round) and stage in ROUND_STAGES

    def table_name(self, stage: str) -> str:
        """Where stage `stage`'s table lives under `iter_NNN/`: its name, or in a sampling
        round `rounds/rr/<name>` for the data stages."""
        return round_table(self.round, stage) if self.in_sampling_round(stage) else stage

    def stage_path(self, stage: str) -> str:
        return self.run_dir.stage_path(self.iteration, self.table_name(stage))

    def success(self, stage: str) -> dict | None:
        """The `_SUCCESS` record of stage `stage` of this iteration (and round), or None."""
        return self.run_dir.stage_success(self.iteration, self.table_name(stage))

    def read(self, stage: str) -> pa.Table:
        """A finished input table of this iteration."""
        return self.run_dir.read_stage_table(self.iteration, self.table_name(stage))

    def prompt_ids(self, stage: str) -> list[str]:
        """The sorted distinct prompt ids of a finished input table (a sharded stage's plan)."""
        return self.run_dir.stage_prompt_ids(self.iteration, self.table_name(stage))

    def read_rows(self, stage: str, first: str, last: str) -> pa.Table:
        """The rows of a finished input table with prompt_id in [first, last] (one shard)."""
        return self.run_dir.read_stage_rows(self.iteration, self.table_name(stage), first, last)

    def write(self, stage: str, table: pa.Table, part: int = 0) -> str:
        return self.run_dir.write_stage_table(self.iteration, self.table_name(stage), table, part)

    def write_rejected(self, stage: str, table: pa.Table, part: int = 0) -> None:
        self.run_dir.write_rejected(self.iteration, self.table_name(stage), table, part)

    def in_round(self, round: int, config: RunConfig | None = None) -> StageContext:
        """This context in sampling round `round` (with that round's config, if given)."""
        return replace(self, round=round, config=config or self.config)


class Stage:
    """One step of an iteration. `name` is also its output directory under `iter_NNN/`.

    Subclasses set the class attributes and implement `run`; the defaults describe a stage
    that reads no model, no config and no earlier iteration.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    inputs: tuple[str, ...] = ()
    history_inputs: tuple[str, ...] = ()
    # In sampling round r > 1: stages of rounds 1..r-1 of the same iteration the output depends
    # on (the prompts taken so far, which a later round must not take again).
    round_history_inputs: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    schema: ClassVar[pa.Schema | None] = None
    # True when the stage commits θ_{t+1}: the stages of t+1 that read the policy follow it.
    commits_model: ClassVar[bool] = False
    # True when a rerun with the same fingerprint may keep the shards a killed run committed.
    resumable: ClassVar[bool] = False
    # False when the output is more than the stage directory (a commit moves models and LATEST)
    # or cheaper to recompute than to copy: such a stage never takes another run's output.
    reusable: ClassVar[bool] = True
    # True when the stage generates with θ_t on the driver's shared vLLM engines
    # (generation/engines.py): the runner keeps them for it instead of releasing them.
    shares_engine: ClassVar[bool] = False

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        """Whether the default chain includes this stage for `config`."""
        return True

    @classmethod
    def for_config(cls, config: RunConfig) -> Stage:
        """The instance the default chain runs for `config`."""
        return cls()

    def models(self, ctx: StageContext) -> dict[str, str]:
        """The models the output depends on, role -> URI; fingerprinted by content."""
        return {}

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        """What else the output depends on (JSON-able); None when nothing."""
        return None

    def resource_asks(self, config: RunConfig) -> list[ResourceAsk]:
        """The Ray resources the stage will ask for, checked against the cluster first."""
        return []

    def run(self, ctx: StageContext) -> StageResult:
        raise NotImplementedError(f"stage {self.name!r} does not implement run()")


class PolicyStage(Stage):
    """A stage that reads θ_t (generation, ranking by the policy, reference log-probs, training)."""

    def models(self, ctx: StageContext) -> dict[str, str]:
        return {POLICY: ctx.policy_uri}
