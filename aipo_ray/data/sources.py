"""Prompt sources: JSONL, Parquet, CSV, a saved `datasets` directory, or a hub dataset name.

Every source becomes rows of the `prompts` contract (prompt_id, prompt, source, iteration). A row
that cannot be a prompt never stops the load: it becomes a `_rejected` row naming the file, the row
and the reason, and the stage decides (max_bad_row_fraction) whether too many were bad. Row numbers
are what a user would look up: the line number for JSONL and CSV, the 0-based row index for Parquet
and `datasets`.

Sources are read on the driver, not in Ray Data: prompt pools are small next to generations
(UltraFeedback is 60K prompts), and a single reader keeps row numbers and duplicate removal exact.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aipo_ray.config import PromptsConfig, PromptSourceConfig, StorageConfig
from aipo_ray.config.data import SEED_PROMPTS
from aipo_ray.storage import filesystem, make_prompt_id, normalize_prompt
from aipo_ray.storage.schemas import PROMPTS

_SUFFIX_FORMATS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv",
}
# Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` always write.
_HF_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")
_RAW_PREVIEW = 1000  # chars of a bad row kept in _rejected; whole rows can be megabytes


class PromptSourceError(ValueError):
    """A source that cannot be read at all (missing, unknown format); names the source."""


@dataclass
class RawRow:
    """One record of a source file, or the reason it could not be parsed."""

    source: str
    row: int
    record: dict[str, Any] | None = None
    reason: str | None = None
    raw: str | None = None


@dataclass
class LoadedPrompts:
    """Valid prompts (the `prompts` contract) plus every refused row with its reason."""

    table: pa.Table
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0

    @property
    def rejected_counts(self) -> dict[str, int]:
        return dict(Counter(r["reason"].split(":")[0] for r in self.rejected))


def seed_prompts_path() -> str:
    """The seed prompt file shipped inside the package (the default pool of the local run)."""
    return str(resources.files("aipo_ray") / "assets" / "seed_prompts.jsonl")


def resolve_source_uri(path: str) -> str:
    """Where a `prompts.sources[].path` points: the shipped seed file for `builtin:seed_prompts`."""
    return seed_prompts_path() if path == SEED_PROMPTS else path


# -- locating files ------------------------------------------------------------------------------
def _detect_format(path: str) -> str:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in _SUFFIX_FORMATS:
        raise PromptSourceError(
            f"prompt source {path!r}: cannot tell the format from suffix {suffix!r}; set format: "
            f"to one of jsonl, parquet, csv, hf_disk, hf_hub"
        )
    return _SUFFIX_FORMATS[suffix]


def resolve_files(src: PromptSourceConfig, storage: StorageConfig | None = None) -> list[tuple[str, str]]:
    """(path, format) of every file `src` names: a file, a glob, a directory, or a `datasets` dir."""
    if src.format == "hf_hub":
        return [(src.path, "hf_hub")]
    uri = resolve_source_uri(src.path)
    fs, path = filesystem(uri, storage)
    if any(ch in path for ch in "*?["):
        matches = sorted(fs.glob(path))
        if not matches:
            raise PromptSourceError(f"prompt source {src.path!r}: the glob matches no file")
        return [(_with_protocol(uri, m), src.format if src.format != "auto" else _detect_format(m))
                for m in matches]
    if not fs.exists(path):
        raise PromptSourceError(
            f"prompt source {src.path!r} not found; check prompts.sources[].path (relative paths "
            f"are read from the working directory), or use format: hf_hub for a hub dataset name"
        )
    if not fs.isdir(path):
        return [(uri, src.format if src.format != "auto" else _detect_format(path))]
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
    if src.format == "hf_disk" or (src.format == "auto" and names & set(_HF_MARKERS)):
        return [(uri, "hf_disk")]
    files = sorted(p for p in fs.ls(path, detail=False)
                   if posixpath.splitext(p)[1].lower() in _SUFFIX_FORMATS)
    if not files:
        raise PromptSourceError(f"prompt source {src.path!r}: directory holds no prompt file")
    return [(_with_protocol(uri, f), src.format if src.format != "auto" else _detect_format(f))
            for f in files]


def _with_protocol(uri: str, path: str) -> str:
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    return protocol + path if protocol and not path.startswith(protocol) else path


# -- reading records -----------------------------------------------------------------------------
def _preview(text: str) -> str:
    return text if len(text) <= _RAW_PREVIEW else text[:_RAW_PREVIEW] + "…"


def read_jsonl(data: bytes, source: str) -> Iterator[RawRow]:
    """One JSON object per line; blank lines are not rows."""
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield RawRow(source, lineno, reason=f"invalid_utf8: byte {e.start}",
                         raw=_preview(line.decode("utf-8", "replace")))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            yield RawRow(source, lineno, reason=f"malformed_json: {e.msg} at column {e.colno}",
                         raw=_preview(text))
            continue
        if not isinstance(record, dict):
            yield RawRow(source, lineno, reason=f"wrong_type: line is a JSON {type(record).__name__}, "
                         "expected an object", raw=_preview(text))
            continue
        yield RawRow(source, lineno, record=record)


def read_csv(data: bytes, source: str) -> Iterator[RawRow]:
    """A header row, then one record per row; `row` is the line the record starts on."""
    # surrogateescape keeps undecodable bytes visible per field instead of failing the whole file.
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    start = 2
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RawRow(source, start, reason=f"malformed_csv: {e}")
            start = reader.line_num + 1
            continue
        record.pop(None, None)  # cells beyond the header have no column name
        bad = [k for k, v in record.items() if isinstance(v, str) and _has_surrogates(v)]
        if bad:
            yield RawRow(source, start, reason=f"invalid_utf8: column {bad[0]!r}",
                         raw=_preview(str({k: v.encode("utf-8", "surrogateescape").decode(
                             "utf-8", "replace") if isinstance(v, str) else v
                             for k, v in record.items()})))
        else:
            yield RawRow(source, start, record=record)
        start = reader.line_num + 1


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_parquet(fs, path: str, source: str) -> Iterator[RawRow]:
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        index = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield RawRow(source, index, record=record)
                index += 1


def read_hf(src: PromptSourceConfig, path: str, fs, source: str) -> Iterator[RawRow]:
    """A `save_to_disk` directory (Dataset or DatasetDict) or, on a user's machine, a hub name."""
    import datasets

    if src.format == "hf_hub":
        ds = datasets.load_dataset(src.path, split=src.split)
    else:
        remote = "://" in path
        ds = datasets.load_from_disk(path, storage_options=fs.storage_options if remote else None)
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise PromptSourceError(
                f"prompt source {src.path!r}: no split {src.split!r} (splits: {', '.join(ds)})"
            )
        ds = ds[src.split]
    for index, record in enumerate(ds):
        yield RawRow(source, index, record=record)


def iter_source(src: PromptSourceConfig, storage: StorageConfig | None = None) -> Iterator[RawRow]:
    """Every record of a source, in file order, each with its file and row number."""
    for uri, fmt in resolve_files(src, storage):
        fs, path = filesystem(uri, storage)
        name = SEED_PROMPTS if src.path == SEED_PROMPTS else uri
        if fmt in ("hf_disk", "hf_hub"):
            yield from read_hf(src, uri, fs, name)
        elif fmt == "parquet":
            yield from read_parquet(fs, path, name)
        else:
            data = fs.cat_file(path)
            yield from (read_jsonl if fmt == "jsonl" else read_csv)(data, name)


# -- records to prompts --------------------------------------------------------------------------
def extract_prompt(
    record: dict[str, Any], text_field: str, messages_field: str | None
) -> tuple[str | None, str | None]:
    """(prompt text, None) or (None, reason). `text_field` wins; a message list yields its first
    user turn (UltraFeedback `messages`, or TRL's conversational `prompt`)."""
    if text_field in record and record[text_field] is not None:
        value, name = record[text_field], text_field
    elif messages_field and record.get(messages_field) is not None:
        value, name = record[messages_field], messages_field
    else:
        fields = " or ".join(repr(f) for f in (text_field, messages_field) if f)
        return None, f"missing_field: no {fields}"
    if isinstance(value, str) and name == text_field:
        return value, None
    if isinstance(value, list | tuple):
        return _first_user_turn(value, name)
    expected = "a string or a list of messages" if name == text_field else "a list of messages"
    return None, f"wrong_type: {name!r} is {type(value).__name__}, expected {expected}"


def _first_user_turn(messages: list | tuple, name: str) -> tuple[str | None, str | None]:
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return None, f"wrong_type: {name!r} items must be {{role, content}} objects"
        if m["role"] == "user":
            if not isinstance(m["content"], str):
                return None, f"wrong_type: {name!r} user content is {type(m['content']).__name__}"
            return m["content"], None
    return None, f"no_user_turn: {name!r} has no message with role 'user'"


def _check_text(text: str, max_chars: int) -> str | None:
    if not normalize_prompt(text):
        return "empty_prompt"
    if _has_surrogates(text) or "\ufffd" in text:
        return "invalid_utf8: text holds undecodable bytes"
    if len(text) > max_chars:
        return f"too_long: {len(text)} chars > max_prompt_chars {max_chars}"
    return None


def load_prompts(
    cfg: PromptsConfig, storage: StorageConfig | None = None, iteration: int = 0,
    sources: list[PromptSourceConfig] | None = None,
) -> LoadedPrompts:
    """All sources of `cfg`, in order: valid prompts once each, bad rows and duplicates rejected.

    `prompt` keeps the text as written (trimmed; newlines matter in code prompts); `prompt_id` hashes
    the normalised text, so prompts differing only in whitespace are duplicates.
    """
    rows: dict[str, list] = {name: [] for name in PROMPTS.names}
    rejected: list[dict[str, Any]] = []
    first_seen: dict[str, str] = {}
    rows_in = 0
    for src in sources if sources is not None else cfg.sources:
        kept = 0
        for item in iter_source(src, storage):
            if src.limit is not None and kept >= src.limit:
                break
            rows_in += 1
            text, reason = _prompt_of(item, src, cfg.max_prompt_chars)
            where = f"{item.source}:{item.row}"
            pid = make_prompt_id(text) if text is not None else None
            if reason is None and pid in first_seen:
                reason = f"duplicate: same prompt as {first_seen[pid]}"
            if reason is not None:
                raw = item.raw if item.raw is not None else _preview(
                    json.dumps(item.record, default=str, ensure_ascii=False))
                rejected.append({"reason": reason, "prompt_id": pid, "_source": item.source,
                                 "_row": item.row, "raw": raw})
                continue
            first_seen[pid] = where
            for name, value in zip(PROMPTS.names, (pid, text.strip(), item.source, iteration),
                                   strict=True):
                rows[name].append(value)
            kept += 1
    return LoadedPrompts(pa.table(rows, schema=PROMPTS), rejected, rows_in)


def _prompt_of(item: RawRow, src: PromptSourceConfig, max_chars: int) -> tuple[str | None, str | None]:
    if item.reason is not None:
        return None, item.reason
    text, reason = extract_prompt(item.record, src.text_field, src.messages_field)
    if reason is not None:
        return None, reason
    reason = _check_text(text, max_chars)
    return (None, reason) if reason else (text, None)
