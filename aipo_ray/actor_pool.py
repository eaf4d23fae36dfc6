"""One Ray Data actor pool for every batch stage: its spec, restart policy, deadlines, Arrow output.

    ds = map_pool(ds, HFGenerator, PoolSpec.of("generation", cfg), schema=GENERATIONS, **kwargs)
    refs = output_refs(ds, stall=None)          # the blocks, left in the object store

The hf generation, ranking and reference pools share the same policies so they cannot drift:

- a killed actor is restarted and its batch retried (`max_restarts`, `max_task_retries`: Ray Data's
  defaults, made explicit so a change of default cannot silently drop prompts);
- every batch runs under `call_with_deadline` (`timeout_s`, `max_retries`): a hung batch is
  retried, then fails the stage naming its prompt ids;
- every batch comes back as an Arrow table in the contract's column order and types.

Pools that Ray builds for us (ray.data.llm's vLLM engines) cannot be wrapped per batch: for them
`output_refs` watches progress instead (`Stall`) and stops the execution when none comes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aipo_ray.watchdog import call_with_deadline, few_ids

if TYPE_CHECKING:
    import ray
    import ray.data

log = logging.getLogger(__name__)
# Fault-injection hooks of the tests (AIPO_TEST_*, unset in real runs) set on the driver are
# handed to the pool's actors.
TEST_HOOK_PREFIX = "AIPO_TEST_"


@dataclass(frozen=True)
class PoolSpec:
    """How many actors, what each holds, how batches are cut, and how failures are handled."""

    what: str  # names the pool in logs and errors: "generation", "ranking", "reference"
    size: int
    batch_size: int | None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_format: str = "pyarrow"
    timeout_s: float = 3600.0
    max_retries: int = 2
    max_restarts: int = -1  # -1: restart a dead actor forever (tests/reliability/test_actor_loss.py)
    max_task_retries: int = -1

    @classmethod
    def of(cls, what: str, cfg: Any, **overrides: Any) -> PoolSpec:
        """The spec a config section declares: num_replicas, cpus/gpus_per_replica, batch_size,
        timeout_s and max_retries (generation, ranking and reference all spell them so)."""
        values = dict(what=what, size=cfg.num_replicas, batch_size=cfg.batch_size,
                      num_cpus=cfg.cpus_per_replica, num_gpus=cfg.gpus_per_replica,
                      timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)
        return cls(**{**values, **overrides})


def map_pool(ds: ray.data.Dataset, fn_cls: type, spec: PoolSpec, schema: pa.Schema | None = None,
             **constructor_kwargs: Any) -> ray.data.Dataset:
    """`ds.map_batches` through `spec.size` actors of `fn_cls(**constructor_kwargs)`, each batch
    under the spec's deadline and converted to `schema` (when given)."""
    import ray.data

    resources: dict[str, Any] = {"num_cpus": spec.num_cpus}
    if spec.num_gpus:
        resources["num_gpus"] = spec.num_gpus
    hooks = {k: v for k, v in os.environ.items() if k.startswith(TEST_HOOK_PREFIX)}
    if hooks:  # a running cluster's workers do not see the driver's later environment
        resources["runtime_env"] = {"env_vars": hooks}
    return ds.map_batches(
        DeadlineActor,
        fn_constructor_kwargs=dict(fn_cls=fn_cls, kwargs=constructor_kwargs, spec=spec,
                                   schema=schema),
        compute=ray.data.ActorPoolStrategy(size=spec.size),
        batch_size=spec.batch_size, batch_format=spec.batch_format,
        max_restarts=spec.max_restarts, max_task_retries=spec.max_task_retries, **resources,
    )


class DeadlineActor:
    """Wraps a pool's callable class: each batch under the deadline, each result as Arrow."""

    def __init__(self, fn_cls: type, kwargs: dict[str, Any], spec: PoolSpec,
                 schema: pa.Schema | None):
        self.fn, self.spec, self.schema = fn_cls(**kwargs), spec, schema

    def __call__(self, batch: Any) -> pa.Table:
        ids = batch_prompt_ids(batch)
        out = call_with_deadline(lambda: self.fn(batch), self.spec.timeout_s,
                                 self.spec.max_retries, ids, self.spec.what)
        return to_arrow(out, self.schema)


def batch_prompt_ids(batch: Any) -> list[str]:
    """The prompt ids of a pyarrow, pandas or numpy-dict batch (what a failure names)."""
    column = batch.column("prompt_id").to_pylist() if isinstance(batch, pa.Table) else batch[
        "prompt_id"]
    return [str(p) for p in column]


def to_arrow(out: Any, schema: pa.Schema | None = None) -> pa.Table:
    """A batch result (Arrow table or dict of columns) as a table in `schema`'s order and types."""
    table = out if isinstance(out, pa.Table) else pa.table(dict(out))
    if schema is None:
        return table
    return table.select(schema.names).cast(schema)


def as_table(block: Any) -> pa.Table:
    """A Ray Data block (Arrow, or pandas when a stage produced one) as an Arrow table."""
    return block if isinstance(block, pa.Table) else pa.Table.from_pandas(block,
                                                                          preserve_index=False)


def collect(ds: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    """A small Dataset as one table on the caller (API and tests; stages write shards instead)."""
    import ray

    blocks = [t for t in map(as_table, ray.get(output_refs(ds))) if t.num_rows]
    if not blocks:
        return schema.empty_table()
    return to_arrow(pa.concat_tables(blocks, promote_options="default"), schema)


@dataclass(frozen=True)
class Stall:
    """Progress deadline for a pool that cannot be wrapped per batch (ray.data.llm).

    The first output may take `startup_s` longer than `timeout_s` (engine start-up: download,
    load, compile); after it, `timeout_s` without a new block fails the execution.
    """

    timeout_s: float
    startup_s: float
    what: str = "generation"


class StalledError(RuntimeError):
    """A pool produced no output within its progress deadline; the message names the prompts."""


def output_refs(ds: ray.data.Dataset, stall: Stall | None = None,
                prompt_ids: Sequence[str] = (),
                on_rows: Callable[[int], None] | None = None) -> list[ray.ObjectRef]:
    """Run `ds` and return its blocks' refs (the rows stay in the object store).

    With `stall`, a watchdog on the consuming side fails when no block completes in time, stops
    the Ray Data execution, and names the prompt ids of `prompt_ids` not yet in the output.
    `on_rows(n)` is called on the driver as each output bundle of n rows arrives (progress).
    """
    if stall is None:
        refs = []
        for bundle in ds.iter_internal_ref_bundles():
            refs.extend(bundle.block_refs)
            _count(bundle, on_rows)
        return refs
    return _watched_refs(ds, stall, prompt_ids, on_rows)


def _count(bundle: Any, on_rows: Callable[[int], None] | None) -> None:
    if on_rows is not None:
        on_rows(bundle.num_rows() or 0)


_DONE = object()


def _watched_refs(ds: ray.data.Dataset, stall: Stall, prompt_ids: Sequence[str],
                  on_rows: Callable[[int], None] | None = None) -> list:
    # Ray 2.60 offers no public way to stop an execution from outside its iterator, and its
    # public iterators block until the first output; so the executor is built here (as Dataset
    # does internally) and its handle kept to shut it down.
    executor = ds._create_executor()
    bundles = ds._build_bundle_iterator(executor)
    arrivals: queue.Queue = queue.Queue()

    def consume() -> None:
        try:
            for bundle in bundles:
                arrivals.put(bundle)
            arrivals.put(_DONE)
        except BaseException as e:  # handed to the waiting thread
            arrivals.put(e)

    threading.Thread(target=consume, daemon=True, name=f"aipo-{stall.what}-progress").start()
    refs: list = []
    allowance = stall.timeout_s + stall.startup_s
    started = time.monotonic()
    while True:
        try:
            item = arrivals.get(timeout=allowance)
        except queue.Empty:
            executor.shutdown(force=True, exception=StalledError(stall.what))
            raise StalledError(_stall_message(stall, refs, prompt_ids,
                                              time.monotonic() - started)) from None
        if item is _DONE:
            return refs
        if isinstance(item, BaseException):
            raise item
        refs.extend(item.block_refs)
        _count(item, on_rows)
        allowance = stall.timeout_s


def _stall_message(stall: Stall, refs: list, prompt_ids: Sequence[str], waited: float) -> str:
    missing = sorted(set(prompt_ids) - _ids_in(refs))
    phase = "after its last output" if refs else "including start-up, before any output"
    return (f"{stall.what}: no progress for timeout_s={stall.timeout_s:g} ({phase}; "
            f"{waited:.0f}s in all); the execution was stopped. {len(missing)} prompts not yet "
            f"done: {few_ids(missing)} (raise {stall.what}.timeout_s / startup_timeout_s if "
            f"the engine is only slow; else look for a hung engine in the Ray logs)")


def _ids_in(refs: list) -> set[str]:
    import ray

    if not refs:
        return set()
    return set(ray.get(ray.remote(num_cpus=0)(_prompt_ids_of_blocks).remote(*refs)))


def _prompt_ids_of_blocks(*blocks: pa.Table) -> list[str]:
    import pyarrow.compute as pc

    tables = [as_table(b) for b in blocks]
    return sorted({p for t in tables if t.num_rows
                   for p in pc.unique(t.column("prompt_id")).to_pylist()})

