"""Shared work between runs: a stage whose fingerprint equals a finished stage of another run
takes that run's output instead of computing it again.

Fingerprints name content (fingerprint.py), so equal fingerprints mean equal outputs: the
variants of a sweep that differ only in the loss share iteration 1's self-instruct, generation,
ranking, pairs and reference log-probs. The output is copied (a server-side copy on S3) and the
copy's `_SUCCESS` names the stage directory it came from in `reused_from`.

Variants that run at the same time in one process would otherwise compute an equal stage twice;
`claim` makes the second wait for the first and then take its output.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aipo_ray.storage import RunDir, clear_directory, with_retries, write_success
from aipo_ray.storage.tables import SUCCESS

if TYPE_CHECKING:
    from .stage import Stage, StageContext

log = logging.getLogger(__name__)
# Markers of the source's own run: its `_SUCCESS` is rewritten for the copy, `_STARTED` is not
# the copy's to have.
_NOT_COPIED = frozenset({SUCCESS, "_STARTED"})


class SharedStages:
    """The finished stages of `run_dirs`, offered to any run that computes an equal stage."""

    def __init__(self, run_dirs: Sequence[RunDir]):
        self.run_dirs = list(run_dirs)
        self._lock = threading.Lock()
        self._running: dict[str, threading.Lock] = {}

    def find(self, ctx: StageContext, name: str, fingerprint: str) -> RunDir | None:
        """Another run whose stage `name` of this iteration finished with `fingerprint`."""
        for rd in self.run_dirs:
            if rd.uri == ctx.run_dir.uri:
                continue
            record = rd.stage_success(ctx.iteration, ctx.table_name(name))
            if record and record.get("fingerprint") == fingerprint:
                return rd
        return None

    @contextmanager
    def claim(self, fingerprint: str) -> Iterator[None]:
        """Hold `fingerprint` while computing it; another holder waits until it is done."""
        with self._lock:
            lock = self._running.setdefault(fingerprint, threading.Lock())
        with lock:
            yield

    def take(self, stage: Stage, ctx: StageContext, fingerprint: str) -> dict[str, Any] | None:
        """Copy an equal finished stage into this run; its `_SUCCESS` record, or None."""
        source = self.find(ctx, stage.name, fingerprint)
        if source is None:
            return None
        record = copy_stage(source, ctx.run_dir, ctx.iteration, ctx.table_name(stage.name))
        log.info("iteration %d stage %r: reused from %s", ctx.iteration, ctx.table_name(stage.name),
                 record["reused_from"])
        return record


def copy_stage(source: RunDir, target: RunDir, iteration: int, name: str) -> dict[str, Any]:
    """Copy a finished stage directory between two runs on one filesystem; `_SUCCESS` last."""
    src, dst = source.stage_path(iteration, name), target.stage_path(iteration, name)
    fs, storage = target.fs, target.storage
    record = source.stage_success(iteration, name)
    with_retries(lambda: clear_directory(fs, dst), f"clear {target.uri} {name}", storage)
    files = with_retries(lambda: fs.find(src), f"list {source.uri} {name}", storage)
    for path in files:
        rel = posixpath.relpath(path, src)
        if rel in _NOT_COPIED:
            continue
        out = posixpath.join(dst, rel)
        with_retries(lambda p=path, o=out: (fs.makedirs(posixpath.dirname(o), exist_ok=True),
                                            fs.copy(p, o)), f"copy {rel}", storage)
    copied = {**record, "reused_from": source.uri_of(posixpath.relpath(src, source.root)),
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with_retries(lambda: write_success(fs, dst, copied), f"mark {target.uri} {name} done",
                 storage)
    return copied
