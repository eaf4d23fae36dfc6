"""Run directories on a local path or s3://: stage tables, markers, checkpoints."""

from .fs import StorageError, filesystem, is_remote, with_retries
from .run_dir import LATEST, MODELS, RUN_JSON, RunDir, iteration_name
from .schemas import SCHEMAS, SchemaError, conform, make_prompt_id, normalize_prompt
from .tables import (
    REJECTED_DIR,
    SUCCESS,
    clear_directory,
    read_rejected,
    read_success,
    read_table,
    rejected_rows,
    write_rejected,
    write_success,
    write_table,
)

__all__ = [
    "LATEST", "MODELS", "REJECTED_DIR", "RUN_JSON", "SCHEMAS", "SUCCESS", "RunDir", "SchemaError",
    "StorageError", "clear_directory", "conform", "filesystem", "is_remote", "iteration_name",
    "make_prompt_id", "normalize_prompt", "read_rejected", "read_success", "read_table",
    "rejected_rows", "with_retries", "write_rejected", "write_success", "write_table",
]
