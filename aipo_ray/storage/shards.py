"""Shards of a stage's table: fixed-size runs of its input's prompt ids, each committed whole.

    <stage>/part-0000k.parquet    the rows of shard k, written in one put
    <stage>/_shards/0000k.json    its marker, written after the part: the shard's first and last
                                  prompt id, its prompt and row counts and the stage's counters

Shard k holds the k-th run of `size` prompt ids of the input, sorted, so a rerun cuts the same
shards, and every row of a prompt (its N candidates) lands in the same shard. A part without a
marker is the partial output of an unfinished shard and is removed before the shard is redone.
Readers see `part-*.parquet` only (tables.read_table), after the stage's `_SUCCESS`.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schemas import SchemaError
from .tables import list_parts, part_name, read_parts

SHARDS_DIR = "_shards"
_PART_INDEX = re.compile(r"part-(\d+)\.parquet$")


def plan_shards(prompt_ids: Iterable[str], size: int) -> list[list[str]]:
    """The distinct prompt ids, sorted, cut into runs of `size`: shard k is the k-th run."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1 (got {size}); see storage.shard_size")
    ids = sorted(set(prompt_ids))
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def marker_path(directory: str, shard: int) -> str:
    return posixpath.join(directory, SHARDS_DIR, f"{shard:05d}.json")


def write_marker(fs: fsspec.AbstractFileSystem, directory: str, shard: int, ids: Sequence[str],
                 counts: dict[str, Any]) -> dict[str, Any]:
    """Commit shard `shard` (its part is already written); returns the marker's record."""
    record = {"shard": shard, "first": ids[0], "last": ids[-1], "prompts": len(ids), **counts}
    fs.makedirs(posixpath.join(directory, SHARDS_DIR), exist_ok=True)
    fs.pipe_file(marker_path(directory, shard), json.dumps(record, sort_keys=True).encode())
    return record


def read_markers(fs: fsspec.AbstractFileSystem, directory: str) -> dict[int, dict[str, Any]]:
    """The committed shards' records by index (an unreadable marker counts as uncommitted)."""
    folder = posixpath.join(directory, SHARDS_DIR)
    if not fs.exists(folder):
        return {}
    out = {}
    for path in fs.ls(folder, detail=False):
        try:
            record = json.loads(fs.cat_file(path))
            out[int(record["shard"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return out


def marker_matches(record: dict[str, Any], ids: Sequence[str]) -> bool:
    """Whether a committed shard is the shard `ids` of the current plan."""
    return (record.get("first"), record.get("last"), record.get("prompts")) == (
        ids[0], ids[-1], len(ids))


def part_indices(fs: fsspec.AbstractFileSystem, directory: str) -> list[int]:
    return [int(m.group(1)) for p in list_parts(fs, directory)
            if (m := _PART_INDEX.search(posixpath.basename(p)))]


def remove_shard(fs: fsspec.AbstractFileSystem, directory: str, shard: int) -> None:
    """Remove a shard's part and marker (marker first: a part without one is never trusted)."""
    for path in (marker_path(directory, shard), posixpath.join(directory, part_name(shard))):
        if fs.exists(path):
            fs.rm_file(path)


def read_prompt_ids(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """The distinct prompt ids of a table's parts, sorted (only that column is read)."""
    ids: set[str] = set()
    for path in list_parts(fs, directory):
        with fs.open(path, "rb") as f:
            ids.update(pc.unique(pq.read_table(f, columns=["prompt_id"])["prompt_id"]).to_pylist())
    return sorted(i for i in ids if i is not None)


def read_id_range(fs: fsspec.AbstractFileSystem, directory: str, first: str, last: str,
                  schema: pa.Schema | None = None) -> pa.Table:
    """The rows of a table whose prompt_id lies in [first, last] (one shard's input)."""
    return read_parts(fs, directory, schema,
                      filters=[("prompt_id", ">=", first), ("prompt_id", "<=", last)])


def check_each_once(table: pa.Table, prompt_ids: Iterable[str], what: str) -> None:
    """Every prompt id of the shard exactly once and no other; raise naming the prompts."""
    from aipo_ray.watchdog import few_ids

    counts = table.group_by("prompt_id").aggregate([("prompt_id", "count")])
    seen = dict(zip(counts["prompt_id"].to_pylist(), counts["prompt_id_count"].to_pylist(),
                    strict=True))
    expected = set(prompt_ids)
    problems = []
    for label, bad in (("missing", sorted(expected - set(seen))),
                       ("repeated", sorted(p for p, c in seen.items() if c > 1)),
                       ("not asked for", sorted(set(seen) - expected))):
        if bad:
            problems.append(f"{len(bad)} prompt ids {label}: {few_ids(bad)}")
    if problems:
        raise SchemaError(f"{what}: " + "; ".join(problems)
                          + " (a replica dropped or duplicated rows; rerun the stage)")
