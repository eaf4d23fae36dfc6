"""Reading what a run directory holds right now, for stats, the report and eval.

Every reader here tolerates a run in progress: a stage without `_SUCCESS` is simply absent, a
half-written `metrics.jsonl` line is skipped, and nothing raises because a piece is missing.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from aipo_ray.config import RunConfig, apply_overrides, build_config
from aipo_ray.storage import RUN_JSON, RunDir, read_success, with_retries
from aipo_ray.storage.schemas import SchemaError

from .stats import parse_metrics

log = logging.getLogger(__name__)

TABLES = ("prompts", "generations", "rankings", "pairs", "ref_logps")
METRICS = "train/metrics.jsonl"
STATS_JSON = "stats.json"
EVAL_JSON = "eval.json"
_ITER = re.compile(r"^iter_(\d{3,})$")


@dataclass
class IterationData:
    """The finished tables of one iteration (None where a stage has not finished)."""

    iteration: int
    tables: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    successes: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: pd.DataFrame | None = None
    stats: dict[str, Any] | None = None  # stats.json, when the stats stage has run

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)


def load_run_config(rd: RunDir, overrides: list[str] | None = None) -> RunConfig:
    """The run's config from run.json, with `key=value` overrides (eval.*, ranking.*, ...)."""
    if not rd.exists(RUN_JSON):
        raise FileNotFoundError(f"{rd.uri}: no {RUN_JSON}; is this a run directory?")
    data = rd.read_json(RUN_JSON)["config"]
    data["run_dir"] = rd.uri
    return build_config(apply_overrides(data, overrides or []), source=f"{rd.uri}/{RUN_JSON}")


def list_iterations(run_dir: RunDir) -> list[int]:
    """Iteration numbers that have a directory, ascending."""
    fs = run_dir.fs
    if not with_retries(lambda: fs.exists(run_dir.root), f"stat {run_dir.uri}", run_dir.storage):
        return []
    names = with_retries(lambda: fs.ls(run_dir.root, detail=False), f"list {run_dir.uri}",
                         run_dir.storage)
    found = (_ITER.match(posixpath.basename(p.rstrip("/"))) for p in names)
    return sorted(int(m.group(1)) for m in found if m)


def stage_successes(run_dir: RunDir, iteration: int) -> dict[str, dict[str, Any]]:
    """`_SUCCESS` record of every finished stage of an iteration, by stage name."""
    fs = run_dir.fs
    base = run_dir.iteration_path(iteration)
    entries = with_retries(lambda: fs.ls(base, detail=True), f"list {base}", run_dir.storage)
    out = {}
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        name = posixpath.basename(entry["name"].rstrip("/"))
        rec = with_retries(lambda p=entry["name"]: read_success(fs, p), f"read {name}/_SUCCESS",
                           run_dir.storage)
        if rec is not None:
            out[name] = rec
    return out


def read_metrics(run_dir: RunDir, iteration: int) -> pd.DataFrame | None:
    """`train/metrics.jsonl` of an iteration, also while training still writes it."""
    rel = posixpath.join(run_dir.model_name(iteration), METRICS)
    if not run_dir.exists(rel):
        return None
    text = with_retries(lambda: run_dir.fs.cat_file(run_dir.path(rel)), f"read {rel}",
                        run_dir.storage).decode("utf-8", errors="replace")
    frame = parse_metrics(text.splitlines())
    return frame if len(frame) else None


def read_finished_table(run_dir: RunDir, iteration: int, name: str) -> pd.DataFrame | None:
    """A stage table as pandas if its stage finished, else None (never raises for absence)."""
    try:
        return run_dir.read_stage_table(iteration, name).to_pandas()
    except FileNotFoundError:
        return None
    except (SchemaError, pa.ArrowException, OSError) as e:
        # A damaged part file costs its table, not the whole report; an unreachable store
        # (StorageError) still raises.
        log.warning("%s iteration %d %s: %s; left out", run_dir.uri, iteration, name, e)
        return None


def load_iteration(run_dir: RunDir, iteration: int, with_tables: bool = True) -> IterationData:
    """Everything of one iteration that exists now."""
    data = IterationData(iteration=iteration)
    data.successes = stage_successes(run_dir, iteration)
    if with_tables:
        for name in TABLES:
            data.tables[name] = (read_finished_table(run_dir, iteration, name)
                                 if name in data.successes else None)
    data.metrics = read_metrics(run_dir, iteration)
    rel = posixpath.join(run_dir.model_name(iteration), STATS_JSON)
    if run_dir.exists(rel):
        try:
            data.stats = run_dir.read_json(rel)
        except ValueError:
            log.warning("%s/%s is not valid JSON; recomputing", run_dir.uri, rel)
    return data


def read_eval(run_dir: RunDir) -> dict[str, Any] | None:
    if not run_dir.exists(EVAL_JSON):
        return None
    try:
        return run_dir.read_json(EVAL_JSON)
    except ValueError:
        return None


def compute_stats(data: IterationData, similarity=None) -> dict[str, Any]:
    """stats.json of an iteration from what `load_iteration` found (the stats stage's own
    `_SUCCESS` left out, so a recomputation equals what the stage wrote)."""
    from .stats import iteration_stats

    successes = {k: v for k, v in data.successes.items() if k != "stats"}
    return iteration_stats(
        iteration=data.iteration, prompts=data.table("prompts"),
        generations=data.table("generations"), pairs=data.table("pairs"),
        ref_logps=data.table("ref_logps"), successes=successes, metrics=data.metrics,
        similarity=similarity,
    )
