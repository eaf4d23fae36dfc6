"""Running a stage shard by shard: bounded driver memory, each shard committed when complete.

A sharded stage describes its work as a `ShardJob`; `run_sharded` cuts the input's prompt ids
into shards (storage/shards.py), and for each shard not yet committed:

1. reads that shard's input on the driver (bounded by `storage.shard_size`),
2. runs the stage's Ray Data pipeline on it, keeping the output blocks in the object store
   (`actor_pool.output_refs`, with the progress watchdog when the pool has one),
3. hands the block refs to a Ray task that sorts, checks and counts the rows and writes the part
   (the rows never pass through the driver; a retried task overwrites the same file),
4. writes the shard's marker, which carries its counts.

A stage that sets `resumable = True` keeps, on a rerun with the same fingerprint (runner.py), the
shards whose markers match the current plan, so a killed run redoes only unfinished shards.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aipo_ray.actor_pool import Stall, as_table, output_refs
from aipo_ray.console import StageProgress
from aipo_ray.storage import RunDir, with_retries
from aipo_ray.storage import shards as layout
from aipo_ray.storage.tables import part_name, write_table

from .stage import StageContext

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

PROGRESS = "_PROGRESS"  # the running stage's StageProgress snapshot, read by `aipo status`

# (table of one shard's rows, the shard's prompt ids) -> (rows to write, counters to add up)
Finish = Callable[[pa.Table, list[str]], tuple[pa.Table, dict[str, float]]]


@dataclass
class ShardJob:
    """What a sharded stage supplies; `read`, `build` run on the driver, `finish` in a task (it
    must pickle: a module-level function or a partial of one)."""

    prompt_ids: list[str]
    read: Callable[[list[str]], pa.Table]
    build: Callable[[pa.Table], ray.data.Dataset]
    finish: Finish
    schema: pa.Schema
    stall: Stall | None = None
    rows_per_prompt: int = 1  # output rows per input prompt (N candidates), for progress


@dataclass
class ShardTotals:
    """The committed shards' counters added up; `redone` lists the shards this run wrote."""

    prompts: int = 0
    rows: int = 0
    counts: dict[str, float] = field(default_factory=dict)
    redone: list[int] = field(default_factory=list)


def run_sharded(name: str, ctx: StageContext, job: ShardJob) -> ShardTotals:
    """Write stage `name`'s table shard by shard; returns the totals over every shard."""
    rd, directory = ctx.run_dir, ctx.stage_path(name)
    plan = layout.plan_shards(job.prompt_ids, ctx.config.storage.shard_size)
    markers = _committed(rd, directory, plan, name)
    totals = ShardTotals()
    progress = StageProgress(
        f"  {name:<14}", total=len(job.prompt_ids), unit="prompts",
        done=sum(int(m["prompts"]) for m in markers.values()),
        report=functools.partial(_write_progress, rd, directory),
    )
    for k, ids in enumerate(plan):
        if k not in markers:
            started = time.monotonic()
            markers[k] = _run_shard(rd, directory, k, ids, job, progress)
            totals.redone.append(k)
            log.info("%s: shard %d of %d committed (%d prompts, %d rows, %.1fs)", name, k + 1,
                     len(plan), len(ids), markers[k]["rows"], time.monotonic() - started)
            _pause_for_tests(name, k)
        _add(totals, markers[k])
    progress.close()
    if not plan:  # an empty table still has a part, so readers see its schema
        with_retries(lambda: write_table(rd.fs, directory, job.schema.empty_table(), job.schema),
                     f"write the empty {name} table", rd.storage)
    return totals


def _committed(rd: RunDir, directory: str, plan: list[list[str]], name: str) -> dict[int, dict]:
    """Markers of shards a stopped run committed for this plan; everything else is removed."""
    fs = rd.fs
    found = with_retries(lambda: layout.read_markers(fs, directory), f"read {name} shards",
                         rd.storage)
    markers = found
    if any(k >= len(plan) or not layout.marker_matches(m, plan[k]) for k, m in found.items()):
        log.warning("%s: committed shards belong to another plan (storage.shard_size or the "
                    "input changed); redoing every shard", name)
        markers = {}
    on_disk = set(found) | set(layout.part_indices(fs, directory))
    for k in sorted(on_disk - set(markers)):  # partial parts of unfinished shards, stale shards
        with_retries(lambda k=k: layout.remove_shard(fs, directory, k),
                     f"remove unfinished {name} shard {k}", rd.storage)
    if markers:
        log.info("%s: keeping %d committed shards of %d", name, len(markers), len(plan))
    return markers


def _run_shard(rd: RunDir, directory: str, k: int, ids: list[str], job: ShardJob,
               progress: StageProgress) -> dict:
    import ray

    refs = output_refs(job.build(job.read(ids)), job.stall, ids,
                       on_rows=lambda rows: progress.update(rows / job.rows_per_prompt))
    counts = ray.get(_writer().remote(rd, directory, k, ids, job.finish, job.schema, *refs))
    return with_retries(lambda: layout.write_marker(rd.fs, directory, k, ids, counts),
                        f"commit shard {k} of {directory}", rd.storage)


def _write_progress(rd: RunDir, directory: str, snapshot: dict) -> None:
    """The running stage's progress for `aipo status`; best effort, a lost update is harmless."""
    try:
        rd.fs.pipe_file(posixpath.join(directory, PROGRESS), json.dumps(snapshot).encode())
    except OSError as e:
        log.debug("could not write the progress of %s: %s", directory, e)


@functools.cache
def _writer():
    import ray

    # No CPU: the pool's actors may still hold every CPU of a small cluster while it starts.
    # A worker lost mid-write reruns the task, which overwrites the same part.
    return ray.remote(num_cpus=0, max_retries=3)(write_shard)


def write_shard(rd: RunDir, directory: str, k: int, ids: list[str], finish: Finish,
                schema: pa.Schema, *blocks: Any) -> dict[str, float]:
    """In a Ray task: one shard's output blocks → sorted, checked part file; returns its counts."""
    tables = [t for t in map(as_table, blocks) if t.num_rows]
    if not tables:
        raise RuntimeError(f"{directory}: shard {k} ({len(ids)} prompts from {ids[0]}) produced "
                           "no rows; the pool returned nothing for it (see the actors' logs)")
    table, counts = finish(pa.concat_tables(tables, promote_options="default"), ids)
    where = posixpath.join(directory, part_name(k))
    with_retries(lambda: write_table(rd.fs, directory, table, schema, part=k), f"write {where}",
                 rd.storage)
    return {"rows": table.num_rows, **counts}


def _add(totals: ShardTotals, marker: dict[str, Any]) -> None:
    totals.prompts += int(marker["prompts"])
    totals.rows += int(marker["rows"])
    skip = {"shard", "first", "last", "prompts", "rows"}
    for key, value in marker.items():
        if key not in skip and isinstance(value, int | float):
            totals.counts[key] = totals.counts.get(key, 0) + value


# Fault-injection hook (tests/reliability/test_shard_resume.py): with
# AIPO_TEST_PAUSE_AFTER_SHARD=<stage>:<k> the driver stops right after shard k of that stage is
# committed, so a test can SIGKILL it between shards. Unset in every real run.
PAUSE_AFTER_SHARD_ENV = "AIPO_TEST_PAUSE_AFTER_SHARD"


def _pause_for_tests(name: str, k: int) -> None:
    if os.environ.get(PAUSE_AFTER_SHARD_ENV) == f"{name}:{k}":
        log.warning("%s: paused after shard %d (%s)", name, k, PAUSE_AFTER_SHARD_ENV)
        time.sleep(3600)
