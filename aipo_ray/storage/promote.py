"""Promote the trainer's staged checkpoint to θ_{t+1} without writing its bytes a second time.

The trainer commits its model once, to `iter_NNN/train/model` (manifest + `_COMMITTED`, see
checkpoint.py). The commit stage then makes it `models/iter_NNN`:

- local: one `os.replace` of the directory, markers included, so the target is valid the moment
  it exists (a copy only where the rename crosses filesystems);
- s3://: a server-side copy of each object (CopyObject: no byte passes through this process),
  then the staged manifest's exact bytes and `_COMMITTED`, then the staged objects are deleted
  (its `_COMMITTED` first, so a half-deleted staging directory is never valid).

The manifest's bytes are kept, so the committed model's identity (`checkpoint_identity`) is the
staged one's. Before anything moves, `<train>/promoted.json` records where the model goes and its
manifest sha256: a commit re-run after the move (staging directory gone or half deleted)
recognises the committed target by it, and a train stage copied from another run of a sweep
(whose model that run already promoted) finds the model there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipo_ray.config import StorageConfig

from .checkpoint import (
    COMMITTED,
    MANIFEST,
    CheckpointError,
    _check_files,
    build_manifest,
    manifest_bytes,
    marker_bytes,
    read_manifest,
    upload_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from .fs import filesystem, is_remote, with_retries

log = logging.getLogger(__name__)

NOTE = "promoted.json"


@dataclass(frozen=True)
class Promotable:
    """A verified committed checkpoint to promote; `committed` when it already is the target."""

    uri: str
    manifest: dict[str, Any]
    body: bytes
    committed: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def note_uri(staged_uri: str) -> str:
    """`promoted.json` next to the staging directory (it outlives the directory)."""
    return posixpath.join(posixpath.dirname(staged_uri.rstrip("/")), NOTE)


def _call(fn, what: str, storage: StorageConfig | None):
    return with_retries(fn, what, storage)


def check_staged(uri: str, storage: StorageConfig | None = None) -> Promotable:
    """The staged checkpoint at `uri`, checked against its manifest; CheckpointError if damaged.

    On S3 each object's size and ETag are compared with what `_COMMITTED` recorded at upload
    (an object changed since has another ETag) instead of reading every byte back; a marker
    without ETags (local, or an older upload) gets the full sha256 check.
    """
    manifest, body = read_manifest(uri, storage)
    fs, root = filesystem(uri, storage)
    root = root.rstrip("/")
    marker = json.loads(_call(lambda: fs.cat_file(posixpath.join(root, COMMITTED)),
                              f"read {uri}/{COMMITTED}", storage))
    etags = marker.get("etags") if is_remote(uri) else None
    if not etags:
        _check_files(fs, root, uri, manifest, storage)
        return Promotable(uri, manifest, body)
    for entry in manifest["files"]:
        rel = entry["path"]
        try:
            info = _call(lambda r=rel: fs.info(posixpath.join(root, r)), f"stat {uri}/{rel}",
                         storage)
        except FileNotFoundError:
            raise CheckpointError(f"{uri}/{rel}: listed in {MANIFEST} but missing") from None
        if info["size"] != entry["size"]:
            raise CheckpointError(f"{uri}/{rel}: {info['size']} bytes, manifest says "
                                  f"{entry['size']} (truncated or replaced)")
        if info.get("ETag") != etags.get(rel):
            raise CheckpointError(f"{uri}/{rel}: ETag differs from the one {COMMITTED} recorded "
                                  "(the object changed after its upload)")
    return Promotable(uri, manifest, body)


def _identity_or_none(uri: str, storage) -> str | None:
    try:
        return hashlib.sha256(read_manifest(uri, storage)[1]).hexdigest()
    except CheckpointError:
        return None


def locate_staged(staged_uri: str, target_uri: str,
                  storage: StorageConfig | None = None) -> Promotable:
    """The checkpoint to promote: the staged one, or where an earlier promotion put it.

    Raises CheckpointError (the staged input is damaged: train again) when the staged
    checkpoint is invalid and no promotion note leads to a valid model with its manifest.
    """
    try:
        return check_staged(staged_uri, storage)
    except CheckpointError as damage:
        fs, path = filesystem(note_uri(staged_uri), storage)
        try:
            note = json.loads(_call(lambda: fs.cat_file(path), f"read {note_uri(staged_uri)}",
                                    storage))
        except FileNotFoundError:
            raise damage from None
        for uri in dict.fromkeys([target_uri, note["to"]]):
            if _identity_or_none(uri, storage) == note["manifest_sha256"]:
                manifest = verify_checkpoint(uri, storage)  # reads it all: a rare re-run
                log.info("%s was promoted to %s earlier", staged_uri, uri)
                body = read_manifest(uri, storage)[1]
                return Promotable(uri, manifest, body, committed=uri == target_uri)
        raise CheckpointError(f"{damage}; it was promoted to {note['to']}, which no longer "
                              "holds that model") from None


def promote_checkpoint(source: Promotable, staged_uri: str, target_uri: str,
                       storage: StorageConfig | None = None) -> str:
    """Make `source` the committed checkpoint at `target_uri`; the staging copy is gone after.

    Returns how: "renamed", "copied" (server-side on S3) or "already" (an earlier run did it).
    """
    if is_remote(staged_uri) != is_remote(target_uri):
        raise ValueError(f"{staged_uri} and {target_uri}: promote within one storage only")
    how = "already"
    if not source.committed:
        fs, path = filesystem(note_uri(staged_uri), storage)
        note = json.dumps({"to": target_uri, "manifest_sha256": source.sha256}).encode()
        _call(lambda: fs.pipe_file(path, note), f"write {note_uri(staged_uri)}", storage)
        renamed = (source.uri == staged_uri and not is_remote(target_uri)
                   and _rename_local(staged_uri, target_uri))
        if not renamed:
            copy_checkpoint(source, target_uri, storage)
        how = "renamed" if renamed else "copied"
    _drop(staged_uri, storage)  # only ever this iteration's staging directory, never `source`
    return how


def copy_checkpoint(source: Promotable, target_uri: str, storage: StorageConfig | None) -> None:
    """Steps 1-4 at `target_uri` with `source`'s files copied within the storage (server-side
    on S3) and its manifest's exact bytes."""
    src_root = filesystem(source.uri, storage)[1]
    src_root = src_root.rstrip("/")

    def transfer(rel, fs, target):
        fs.copy(posixpath.join(src_root, rel), target)

    write_checkpoint(target_uri, source.manifest, transfer, storage, body=source.body)


def _rename_local(staged_uri: str, target_uri: str) -> bool:
    """os.replace the staging directory onto the target; False where they are on two filesystems.

    A target already there (a failed or superseded earlier commit of this iteration) is first
    invalidated, then moved aside and deleted once the new one is in place.
    """
    staged = Path(filesystem(staged_uri)[1])
    target = Path(filesystem(target_uri)[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.replaced-*"):  # a crash mid-swap
        shutil.rmtree(leftover, ignore_errors=True)
    aside = None
    if target.exists():
        (target / COMMITTED).unlink(missing_ok=True)
        aside = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
    try:
        os.replace(staged, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        return False
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    log.info("renamed %s to %s", staged, target)
    return True


def scratch_dir(uri: str) -> str | None:
    """A directory to save a model into before `stage_checkpoint(..., uri)`: next to a local
    `uri` (same filesystem, so staging is a rename), None for remote storage (any temp dir)."""
    if is_remote(uri):
        return None
    parent = Path(filesystem(uri)[1]).parent
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def stage_checkpoint(local_dir: str, uri: str, storage: StorageConfig | None = None) -> None:
    """Commit the freshly saved model in `local_dir` at `uri`, writing its bytes once.

    Local `uri`: the manifest and `_COMMITTED` are written into `local_dir`, which is then
    renamed onto `uri` (a previous checkpoint there is replaced whole); `local_dir` is gone
    after. Remote `uri`: the commit protocol's upload (`upload_checkpoint`).
    """
    if is_remote(uri):
        upload_checkpoint(local_dir, uri, storage)
        return
    manifest = build_manifest(local_dir)
    body = manifest_bytes(manifest)
    (Path(local_dir) / MANIFEST).write_bytes(body)
    (Path(local_dir) / COMMITTED).write_bytes(marker_bytes(body))
    if not _rename_local(local_dir, uri):  # another filesystem after all
        upload_checkpoint(local_dir, uri, storage)


def _drop(staged_uri: str, storage: StorageConfig | None) -> None:
    """Delete what is left of the staging directory, its `_COMMITTED` first."""
    fs, root = filesystem(staged_uri, storage)
    root = root.rstrip("/")
    marker = posixpath.join(root, COMMITTED)
    if _call(lambda: fs.exists(marker), f"stat {staged_uri}/{COMMITTED}", storage):
        _call(lambda: fs.rm_file(marker), f"remove {staged_uri}/{COMMITTED}", storage)
    if _call(lambda: fs.exists(root), f"stat {staged_uri}", storage):
        _call(lambda: fs.rm(root, recursive=True), f"remove {staged_uri}", storage)
