"""Reading and writing a stage's Parquet parts, its `_rejected/` rows and its `_SUCCESS` record.

A table directory is complete only once `_SUCCESS` exists; part files have deterministic names
(`part-00000.parquet`, ...) so a retried stage overwrites rather than appends.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .schemas import REJECTED, SchemaError, conform

SUCCESS = "_SUCCESS"
REJECTED_DIR = "_rejected"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_table(
    fs: fsspec.AbstractFileSystem, directory: str, table: pa.Table, schema: pa.Schema | None = None,
    part: int = 0,
) -> str:
    """Write one part file (checked against `schema` when given); returns its path."""
    if schema is not None:
        table = conform(table, schema, posixpath.join(directory, part_name(part)))
    fs.makedirs(directory, exist_ok=True)
    path = posixpath.join(directory, part_name(part))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    # One put: on S3 the object appears whole or not at all.
    fs.pipe_file(path, buf.getvalue())
    return path


def list_parts(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    if not fs.exists(directory):
        return []
    return sorted(
        p for p in fs.ls(directory, detail=False)
        if posixpath.basename(p).startswith("part-") and p.endswith(".parquet")
    )


def read_table(
    fs: fsspec.AbstractFileSystem, directory: str, schema: pa.Schema | None = None,
    require_success: bool = True,
) -> pa.Table:
    """All parts of a table, in part order. Refuses a table whose stage did not finish."""
    if require_success and not fs.exists(posixpath.join(directory, SUCCESS)):
        raise FileNotFoundError(
            f"{directory}: no {SUCCESS}; the stage that writes it has not finished (run or resume it)"
        )
    return read_parts(fs, directory, schema)


def read_parts(fs: fsspec.AbstractFileSystem, directory: str, schema: pa.Schema | None = None,
               **read_kwargs: Any) -> pa.Table:
    """Every part file's rows (`read_kwargs` go to `pq.read_table`, e.g. `filters`), checked
    against `schema` when given; no `_SUCCESS` check."""
    tables = []
    for path in list_parts(fs, directory):
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, **read_kwargs)
        tables.append(conform(t, schema, path) if schema is not None else t)
    if not tables:
        if schema is None:
            raise SchemaError(f"{directory}: no part files")
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def rejected_rows(
    rows: list[dict[str, Any]], reason_key: str = "reason", source: str = ""
) -> pa.Table:
    """Build a `_rejected` table from dicts holding at least `reason`; the rest goes to `data`."""
    out = {"prompt_id": [], "source": [], "row": [], "reason": [], "data": []}
    for r in rows:
        r = dict(r)
        out["reason"].append(str(r.pop(reason_key)))
        out["prompt_id"].append(r.pop("prompt_id", None))
        out["source"].append(r.pop("_source", None) or source)
        out["row"].append(r.pop("_row", None))
        out["data"].append(json.dumps(r, default=str, ensure_ascii=False))
    return pa.table(out, schema=REJECTED)


def write_rejected(
    fs: fsspec.AbstractFileSystem, stage_dir: str, table: pa.Table, part: int = 0
) -> str | None:
    if table.num_rows == 0:
        return None
    return write_table(fs, posixpath.join(stage_dir, REJECTED_DIR), table, REJECTED, part)


def read_rejected(fs: fsspec.AbstractFileSystem, stage_dir: str) -> pa.Table:
    return read_table(fs, posixpath.join(stage_dir, REJECTED_DIR), REJECTED, require_success=False)


def write_success(fs: fsspec.AbstractFileSystem, directory: str, record: dict[str, Any]) -> None:
    """Mark a stage complete. Written last, after every part file."""
    fs.makedirs(directory, exist_ok=True)
    fs.pipe_file(
        posixpath.join(directory, SUCCESS),
        json.dumps(record, indent=2, sort_keys=True, default=str).encode(),
    )


def read_success(fs: fsspec.AbstractFileSystem, directory: str) -> dict[str, Any] | None:
    """The `_SUCCESS` record, or None when the stage has not finished (or the marker is garbage)."""
    path = posixpath.join(directory, SUCCESS)
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def clear_directory(fs: fsspec.AbstractFileSystem, directory: str) -> None:
    """Remove a half-written stage output so its rerun cannot mix old and new rows."""
    if fs.exists(directory):
        fs.rm(directory, recursive=True)
