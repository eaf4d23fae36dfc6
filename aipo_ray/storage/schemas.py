"""The Parquet contracts between stages, written down once and checked at read and write."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa

PROMPTS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("source", pa.string()),
    ("iteration", pa.int32()),
])
GENERATIONS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("candidate_idx", pa.int32()),
    ("response", pa.string()), ("num_tokens", pa.int32()), ("finish_reason", pa.string()),
])
RANKINGS = pa.schema([
    ("prompt_id", pa.string()), ("scores", pa.list_(pa.float64())), ("best_idx", pa.int32()),
    ("worst_idx", pa.int32()),
])
PAIRS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
    ("rejected", pa.string()), ("chosen_score", pa.float64()), ("rejected_score", pa.float64()),
])
REF_LOGPS = pa.schema([
    ("prompt_id", pa.string()), ("ref_chosen_logp", pa.float64()),
    ("ref_rejected_logp", pa.float64()), ("chosen_len", pa.int32()), ("rejected_len", pa.int32()),
])
# What the pairs stage writes: the PAIRS contract plus what the report and the length analysis need.
PAIRS_OUT = pa.schema([
    *PAIRS, ("chosen_idx", pa.int32()), ("rejected_idx", pa.int32()),
    ("chosen_num_tokens", pa.int32()), ("rejected_num_tokens", pa.int32()),
])
# What the rankings stage writes: the RANKINGS contract plus why the ranker refused a prompt (null
# when it did not: a judge's unreadable reply). Older rankings tables lack it; readers use .get.
RANKINGS_OUT = pa.schema([*RANKINGS, pa.field("rejection", pa.string(), nullable=True)])
# The raw table the self_instruct stage writes: the prompts contract plus what the filters need.
SELF_INSTRUCT = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("source", pa.string()),
    ("iteration", pa.int32()), ("request_id", pa.string()), ("response", pa.string()),
    ("finish_reason", pa.string()), ("truncated", pa.bool_()),
])
# Every stage's refused rows share one shape: what, where, why, and the row itself as JSON.
REJECTED = pa.schema([
    ("prompt_id", pa.string()), ("source", pa.string()), ("row", pa.int64()),
    ("reason", pa.string()), ("data", pa.string()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "self_instruct": SELF_INSTRUCT, "prompts": PROMPTS, "generations": GENERATIONS,
    "rankings": RANKINGS, "pairs": PAIRS, "ref_logps": REF_LOGPS, "_rejected": REJECTED,
}


class SchemaError(ValueError):
    """A table does not meet its stage contract; the message names the file and the column."""


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Check the contract columns exist and cast them to the contract types; extra columns stay.

    Raises SchemaError naming `where` (a file or stage) and the offending column.
    """
    columns = {}
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(
                f"{where}: missing column {field.name!r} (has: {', '.join(table.column_names)})"
            )
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(
                    f"{where}: column {field.name!r} has type {col.type}, expected {field.type} ({e})"
                ) from None
        columns[field.name] = col
    for name in table.column_names:
        if name not in columns:
            columns[name] = table.column(name)
    return pa.table(columns)


_SPACE = re.compile(r"\s+")


def normalize_prompt(text: str) -> str:
    """NFC, trimmed, runs of whitespace collapsed: prompts that differ only there are one prompt."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def make_prompt_id(text: str) -> str:
    """Stable id of a prompt: every later row keys on it, so retries never duplicate or drop one."""
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:20]
