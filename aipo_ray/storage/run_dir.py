"""The layout of a run directory (DESIGN.md "Contracts between stages") in one place."""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import pyarrow as pa

from aipo_ray.config import StorageConfig

from . import shards, tables
from .fs import filesystem, with_retries
from .schemas import SCHEMAS

MODELS = "models"
LATEST = "LATEST"
RUN_JSON = "run.json"
TRAIN = "train"
STAGED_MODEL = "model"
TRAIN_METRICS = "metrics.jsonl"


def iteration_name(iteration: int) -> str:
    """iter_001 holds the data made with θ_0 and trains θ_1 (models/iter_001)."""
    return f"iter_{iteration:03d}"


class RunDir:
    """A local path or s3:// prefix holding one run; every path the pipeline touches comes from here."""

    def __init__(self, uri: str, storage: StorageConfig | None = None):
        if "://" not in uri:
            # Absolute, because every URI derived from it travels to Ray workers, whose working
            # directory is not the driver's (a relative model path would not resolve there).
            uri = os.path.abspath(os.path.expanduser(uri))
        self.uri = uri.rstrip("/")
        self.storage = storage or StorageConfig()
        self.fs, self.root = filesystem(self.uri, self.storage)

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def __reduce__(self):  # fsspec instances hold sockets; rebuild them on the other side
        return (RunDir, (self.uri, self.storage))

    # -- paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def iteration_path(self, iteration: int, *parts: str) -> str:
        return self.path(iteration_name(iteration), *parts)

    def stage_path(self, iteration: int, stage: str) -> str:
        return self.iteration_path(iteration, stage)

    def model_name(self, iteration: int) -> str:
        return iteration_name(iteration)

    def model_uri(self, iteration: int) -> str:
        return self.uri_of(MODELS, iteration_name(iteration))

    def staged_model_uri(self, iteration: int) -> str:
        """Where the train stage of `iteration` leaves θ_iteration for the commit stage."""
        return self.uri_of(iteration_name(iteration), TRAIN, STAGED_MODEL)

    def train_metrics_uri(self, iteration: int) -> str:
        return self.uri_of(iteration_name(iteration), TRAIN, TRAIN_METRICS)

    # -- small documents ---------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return with_retries(lambda: self.fs.exists(self.path(*parts)), f"exists {self.uri_of(*parts)}",
                            self.storage)

    def write_json(self, rel: str, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        parent = posixpath.dirname(self.path(rel))
        with_retries(lambda: (self.fs.makedirs(parent, exist_ok=True),
                              self.fs.pipe_file(self.path(rel), data)),
                     f"write {self.uri_of(rel)}", self.storage)

    def read_json(self, rel: str) -> Any:
        return json.loads(with_retries(lambda: self.fs.cat_file(self.path(rel)),
                                       f"read {self.uri_of(rel)}", self.storage))

    def read_text(self, rel: str) -> str | None:
        if not self.exists(rel):
            return None
        return with_retries(lambda: self.fs.cat_file(self.path(rel)),
                            f"read {self.uri_of(rel)}", self.storage).decode().strip()

    # -- stage tables ------------------------------------------------------------------------
    def read_stage_table(self, iteration: int, stage: str, require_success: bool = True) -> pa.Table:
        """A finished stage's table, checked against its contract."""
        directory = self.stage_path(iteration, stage)
        return with_retries(
            lambda: tables.read_table(self.fs, directory, _schema(stage), require_success),
            f"read {stage} of {iteration_name(iteration)}", self.storage,
        )

    def stage_prompt_ids(self, iteration: int, stage: str) -> list[str]:
        """The sorted distinct prompt ids of a finished stage's table (how the next stage cuts
        its shards), read without the other columns."""
        directory = self._finished(iteration, stage)
        return with_retries(lambda: shards.read_prompt_ids(self.fs, directory),
                            f"read prompt ids of {stage}", self.storage)

    def read_stage_rows(self, iteration: int, stage: str, first: str, last: str) -> pa.Table:
        """The rows of a finished stage's table with prompt_id in [first, last]: one shard's input."""
        directory = self._finished(iteration, stage)
        return with_retries(
            lambda: shards.read_id_range(self.fs, directory, first, last, _schema(stage)),
            f"read {stage} rows {first}..{last} of {iteration_name(iteration)}", self.storage)

    def _finished(self, iteration: int, stage: str) -> str:
        directory = self.stage_path(iteration, stage)
        if not self.exists(iteration_name(iteration), stage, tables.SUCCESS):
            raise FileNotFoundError(f"{directory}: no {tables.SUCCESS}; the stage that writes it "
                                    "has not finished (run or resume it)")
        return directory

    def write_stage_table(self, iteration: int, stage: str, table: pa.Table, part: int = 0) -> str:
        directory = self.stage_path(iteration, stage)
        return with_retries(
            lambda: tables.write_table(self.fs, directory, table, _schema(stage), part),
            f"write {stage} of {iteration_name(iteration)}", self.storage,
        )

    def write_rejected(self, iteration: int, stage: str, table: pa.Table, part: int = 0) -> None:
        directory = self.stage_path(iteration, stage)
        with_retries(lambda: tables.write_rejected(self.fs, directory, table, part),
                     f"write rejected rows of {stage}", self.storage)

    def stage_success(self, iteration: int, stage: str) -> dict | None:
        directory = self.stage_path(iteration, stage)
        return with_retries(lambda: tables.read_success(self.fs, directory),
                            f"read {stage}/_SUCCESS", self.storage)

    def latest_model(self) -> str | None:
        """Name of the newest committed model (`LATEST`), e.g. 'iter_002', or None."""
        return self.read_text(LATEST)


def _schema(stage: str) -> pa.Schema | None:
    """The contract of a stage table; a sampling round's `rounds/rr/<stage>` has its stage's."""
    return SCHEMAS.get(posixpath.basename(stage))
