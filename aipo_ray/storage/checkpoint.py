"""Atomic model checkpoints on a local path or s3://: upload, manifest, `_COMMITTED`, `LATEST`.

The commit protocol (DESIGN.md "Contracts between stages"):

1. remove a stale `_COMMITTED` at the target, so a half-overwritten directory is never valid;
2. upload every file of the staged model;
3. write `manifest.json`: every file's relative path, size and sha256;
4. write `_COMMITTED` (it records the manifest's sha256);
5. move `LATEST` at the run root to the new model's name.

A reader trusts a checkpoint only after `verify_checkpoint`: `_COMMITTED` exists and every file of
the manifest is present with its size and sha256. A crash anywhere before step 4 leaves a
directory that every loader refuses; a crash before step 5 leaves the previous `LATEST` in place.

The trainer runs steps 1-4 once, into its staging directory; the commit stage then promotes that
checkpoint to `models/iter_NNN` without writing its bytes again (promote.py: a rename locally, a
server-side copy on S3), keeping the manifest's bytes and so the model's identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from aipo_ray.config import StorageConfig

from .fs import filesystem, is_remote, with_retries
from .run_dir import LATEST, RunDir, iteration_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
COMMITTED = "_COMMITTED"
_MARKERS = (MANIFEST, COMMITTED)
_CHUNK = 8 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint is not committed or does not match its manifest; the message names the file."""


def _sha256_stream(read) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def local_files(local_dir: str | Path) -> list[str]:
    """Relative posix paths of every file under `local_dir` except the commit markers, sorted."""
    root = Path(local_dir)
    rels = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(r for r in rels if r not in _MARKERS)


def build_manifest(local_dir: str | Path) -> dict[str, Any]:
    """{"format": 1, "files": [{"path", "size", "sha256"}, ...]} of a local model directory."""
    files = []
    for rel in local_files(local_dir):
        with open(Path(local_dir) / rel, "rb") as f:
            size, sha = _sha256_stream(f.read)
        files.append({"path": rel, "size": size, "sha256": sha})
    if not files:
        raise CheckpointError(f"{local_dir}: nothing to commit (no files)")
    return {"format": 1, "files": files}


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes of `manifest.json`: their sha256 is the checkpoint's identity."""
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def marker_bytes(manifest_body: bytes, etags: dict[str, str] | None = None) -> bytes:
    """The bytes of `_COMMITTED`: the manifest's sha256 and, on S3, every object's ETag.

    The ETags let the commit stage check a staged model without reading it back (an object
    overwritten or truncated since its upload has another ETag); the identity stays the
    manifest's sha256 alone.
    """
    marker: dict[str, Any] = {"manifest_sha256": hashlib.sha256(manifest_body).hexdigest()}
    if etags:
        marker["etags"] = etags
    return json.dumps(marker, sort_keys=True).encode()


def write_checkpoint(uri: str, manifest: dict[str, Any], transfer, storage: StorageConfig | None,
                     body: bytes | None = None) -> None:
    """Steps 1-4 of the protocol at `uri`; `transfer(rel, fs, target_path)` writes one file.

    `body` is the manifest's exact bytes when they must be kept (a promoted checkpoint keeps
    its identity); by default they are `manifest_bytes(manifest)`.
    """
    fs, root = filesystem(uri, storage)
    root = root.rstrip("/")

    def call(fn, what):
        return with_retries(fn, f"{what} ({uri})", storage)

    committed = posixpath.join(root, COMMITTED)
    if call(lambda: fs.exists(committed), "check marker"):
        log.warning("%s: overwriting a committed checkpoint; invalidating it first", uri)
        call(lambda: fs.rm_file(committed), "remove stale _COMMITTED")
    call(lambda: fs.makedirs(root, exist_ok=True), "mkdir")
    etags = {}
    for entry in manifest["files"]:
        rel = entry["path"]
        target = posixpath.join(root, rel)
        call(lambda t=target: fs.makedirs(posixpath.dirname(t), exist_ok=True), f"mkdir {rel}")
        call(lambda r=rel, t=target: transfer(r, fs, t), f"write {rel}")
        info = call(lambda t=target: fs.info(t), f"stat {rel}")
        if info["size"] != entry["size"]:
            raise CheckpointError(f"{uri}/{rel}: wrote {info['size']} bytes, expected {entry['size']}")
        if is_remote(uri) and info.get("ETag"):
            etags[rel] = info["ETag"]
    body = body if body is not None else manifest_bytes(manifest)
    call(lambda: fs.pipe_file(posixpath.join(root, MANIFEST), body), "write manifest.json")
    call(lambda: fs.pipe_file(committed, marker_bytes(body, etags)), "write _COMMITTED")
    log.info("committed %d files to %s", len(manifest["files"]), uri)


def upload_checkpoint(
    local_dir: str | Path, uri: str, storage: StorageConfig | None = None
) -> dict[str, Any]:
    """Upload a local model directory to `uri` and commit it (steps 1-4). Returns the manifest."""
    manifest = build_manifest(local_dir)
    write_checkpoint(uri, manifest,
                     lambda rel, fs, target: fs.put_file(str(Path(local_dir) / rel), target),
                     storage)
    return manifest


def move_latest(run_dir: RunDir, iteration: int) -> None:
    """Step 5: `LATEST` names θ_iteration (only ever after its `_COMMITTED`)."""
    name = iteration_name(iteration)
    with_retries(lambda: run_dir.fs.pipe_file(run_dir.path(LATEST), name.encode()),
                 f"move {run_dir.uri_of(LATEST)}", run_dir.storage)


def commit_checkpoint(local_dir: str | Path, run_dir: RunDir, iteration: int) -> str:
    """Commit θ_iteration from `local_dir` to `<run>/models/iter_NNN`, then move `LATEST` to it.

    Never deletes another model: the previous reference stays until the user removes it.
    Returns the committed URI.
    """
    uri = run_dir.model_uri(iteration)
    upload_checkpoint(local_dir, uri, run_dir.storage)
    move_latest(run_dir, iteration)
    return uri


def read_manifest(uri: str, storage: StorageConfig | None = None) -> tuple[dict[str, Any], bytes]:
    """(manifest, its raw bytes) of a committed checkpoint; CheckpointError if not committed."""
    fs, root = filesystem(uri, storage)
    root = root.rstrip("/")
    exists = with_retries(lambda: fs.exists(posixpath.join(root, COMMITTED)), f"stat {uri}", storage)
    if not exists:
        raise CheckpointError(
            f"{uri}: no {COMMITTED}; the checkpoint was never committed (its upload did not "
            "finish). Re-run the commit stage, or load a committed model."
        )
    path = posixpath.join(root, MANIFEST)
    try:
        body = with_retries(lambda: fs.cat_file(path), f"read {uri}/{MANIFEST}", storage)
        manifest = json.loads(body)
    except FileNotFoundError:
        raise CheckpointError(f"{uri}: {COMMITTED} but no {MANIFEST}; refusing it") from None
    except ValueError as e:
        raise CheckpointError(f"{uri}/{MANIFEST}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise CheckpointError(f"{uri}/{MANIFEST}: no 'files' list; refusing it")
    _check_marker(fs, root, uri, body, storage)
    return manifest, body


def _check_marker(fs, root: str, uri: str, body: bytes, storage) -> None:
    """`_COMMITTED` records the sha256 of the manifest it committed: a manifest replaced after the
    commit (or a marker left from another commit) would make the model's identity a lie."""
    raw = with_retries(lambda: fs.cat_file(posixpath.join(root, COMMITTED)),
                       f"read {uri}/{COMMITTED}", storage)
    try:
        recorded = json.loads(raw)["manifest_sha256"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{uri}/{COMMITTED}: unreadable marker (no manifest_sha256); "
                              "refusing the checkpoint") from None
    if recorded != hashlib.sha256(body).hexdigest():
        raise CheckpointError(f"{uri}/{MANIFEST}: sha256 differs from the one {COMMITTED} "
                              "recorded (the manifest changed after the commit); refusing it")


def checkpoint_identity(uri: str, storage: StorageConfig | None = None) -> str:
    """`manifest:<sha256>` of a committed checkpoint: what the model is, wherever it lies.

    Reads only the two markers (cheap on S3); the marker must match the manifest.
    """
    _, body = read_manifest(uri, storage)
    return "manifest:" + hashlib.sha256(body).hexdigest()


def _check_files(fs, root: str, uri: str, manifest: dict[str, Any], storage) -> None:
    for entry in manifest["files"]:
        rel, path = entry["path"], posixpath.join(root, entry["path"])
        try:
            size = with_retries(lambda p=path: fs.info(p)["size"], f"stat {uri}/{rel}", storage)
        except FileNotFoundError:
            raise CheckpointError(f"{uri}/{rel}: listed in {MANIFEST} but missing") from None
        if size != entry["size"]:
            raise CheckpointError(
                f"{uri}/{rel}: {size} bytes, manifest says {entry['size']} (truncated or replaced)"
            )

        def digest(p=path):
            with fs.open(p, "rb") as f:
                return _sha256_stream(f.read)[1]

        if with_retries(digest, f"read {uri}/{rel}", storage) != entry["sha256"]:
            raise CheckpointError(f"{uri}/{rel}: sha256 differs from {MANIFEST} (corrupted)")


def verify_checkpoint(uri: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Check `_COMMITTED` and every manifest entry (presence, size, sha256); return the manifest.

    Raises CheckpointError naming the first offending file. On s3:// this reads every byte.
    """
    manifest, _ = read_manifest(uri, storage)
    fs, root = filesystem(uri, storage)
    _check_files(fs, root.rstrip("/"), uri, manifest, storage)
    return manifest


def _cache_dir(uri: str, manifest_body: bytes, storage: StorageConfig | None) -> Path:
    cfg = storage or StorageConfig()
    key = hashlib.sha256(uri.encode() + b"\0" + manifest_body).hexdigest()[:24]
    name = posixpath.basename(uri.rstrip("/")) or "model"
    return Path(os.path.expanduser(cfg.local_cache_dir)) / "checkpoints" / f"{name}-{key}"


def _download(uri: str, manifest: dict, body: bytes, target: Path, storage) -> None:
    fs, root = filesystem(uri, storage)
    root = root.rstrip("/")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        for entry in manifest["files"]:
            rel = entry["path"]
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                with_retries(lambda r=rel: fs.get_file(posixpath.join(root, r), str(tmp / r)),
                             f"download {uri}/{rel}", storage)
            except FileNotFoundError:
                raise CheckpointError(f"{uri}/{rel}: listed in {MANIFEST} but missing") from None
        # Verify the bytes we hold, not the remote ones: that is what transformers will read.
        local_fs, _ = filesystem(str(tmp))
        _check_files(local_fs, str(tmp), uri, manifest, None)
        (tmp / MANIFEST).write_bytes(body)
        marker = {"manifest_sha256": hashlib.sha256(body).hexdigest(), "source": uri}
        (tmp / COMMITTED).write_text(json.dumps(marker))
        os.replace(tmp, target)  # atomic: a cache entry exists only once it is verified
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize_checkpoint(uri: str, storage: StorageConfig | None = None) -> str:
    """A verified local directory holding the committed checkpoint at `uri`.

    A local checkpoint is verified and returned in place. A remote one is downloaded into
    `storage.local_cache_dir`, keyed by URI and manifest hash (a recommit gets a new entry),
    verified, then moved into place; later calls reuse the verified entry.
    """
    if not is_remote(uri):
        verify_checkpoint(uri, storage)
        return os.path.expanduser(uri.removeprefix("file://"))
    manifest, body = read_manifest(uri, storage)
    target = _cache_dir(uri, body, storage)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / COMMITTED).exists():
            log.info("downloading %s to %s", uri, target)
            _download(uri, manifest, body, target, storage)
    return str(target)
