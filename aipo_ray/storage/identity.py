"""What a file or directory *is*, independent of where it lies: the basis of stage fingerprints.

A stage's output depends on the bytes of the models and data it reads, never on their location,
so a run directory that is copied or moved (to another path, or to S3) keeps every fingerprint,
and a recommitted model changes them. Identities are strings with a kind prefix:

- `manifest:<sha256>` — a directory: the sha256 of its manifest (the same `manifest.json` a
  committed checkpoint carries, so a local directory and its committed copy are one identity);
- `file:<sha256>` — a file's bytes;
- `files:<sha256>` — several files matched by a glob (names relative to the glob's root);
- `name:<text>` — something that is not content we can read here (a hub name), taken as named.

Hashing a large local directory is slow, so its identity is cached on disk under the cache root,
keyed by its absolute path and revalidated by the size and mtime of every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from pathlib import Path

from aipo_ray.config import StorageConfig

from .fs import filesystem, is_remote, with_retries

_CHUNK = 8 * 1024 * 1024


def cache_root() -> Path:
    return Path(os.environ.get("AIPO_CACHE_DIR", "~/.cache/aipo_ray")).expanduser()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_signature(root: Path, rels: list[str]) -> list[list]:
    return [[rel, (root / rel).stat().st_size, (root / rel).stat().st_mtime_ns] for rel in rels]


def local_dir_identity(path: str | Path) -> str:
    """`manifest:<sha256>` of a local directory, from the disk cache when no file has changed."""
    from .checkpoint import build_manifest, local_files, manifest_bytes

    root = Path(path).expanduser().resolve()
    rels = local_files(root)
    signature = _stat_signature(root, rels)
    entry = cache_root() / "identity" / f"{sha256_bytes(str(root).encode())[:32]}.json"
    try:
        cached = json.loads(entry.read_text())
        if cached.get("signature") == signature:
            return cached["identity"]
    except (OSError, ValueError, KeyError):
        pass
    identity = "manifest:" + sha256_bytes(manifest_bytes(build_manifest(root)))
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"path": str(root), "signature": signature, "identity": identity}))
    os.replace(tmp, entry)
    return identity


_file_memo: dict[tuple, str] = {}


def local_file_identity(path: str | Path) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _file_memo:
        _file_memo[key] = "file:" + sha256_file(path)
    return _file_memo[key]


def content_identity(uri: str, storage: StorageConfig | None = None) -> str:
    """The identity of whatever `uri` names: a file, a directory, a glob, or (unreadable) a name.

    Remote files are hashed by their bytes; a remote directory must be a committed checkpoint
    (its manifest is its identity, see `checkpoint.checkpoint_identity`).
    """
    if not is_remote(uri):
        local = os.path.expanduser(uri.removeprefix("file://"))
        if os.path.isfile(local):
            return local_file_identity(local)
        if os.path.isdir(local):
            return local_dir_identity(local)
    fs, path = filesystem(uri, storage)
    if any(ch in path for ch in "*?["):
        return _glob_identity(fs, path, uri, storage)
    if with_retries(lambda: fs.isfile(path), f"stat {uri}", storage):
        return "file:" + sha256_bytes(with_retries(lambda: fs.cat_file(path), f"read {uri}",
                                                   storage))
    if with_retries(lambda: fs.isdir(path), f"stat {uri}", storage):
        from .checkpoint import checkpoint_identity

        return checkpoint_identity(uri, storage)
    return "name:" + uri


def _glob_identity(fs, pattern: str, uri: str, storage: StorageConfig | None) -> str:
    matches = sorted(with_retries(lambda: fs.glob(pattern), f"glob {uri}", storage))
    root = pattern.split("*")[0].split("?")[0].split("[")[0]
    root = root if root.endswith("/") else posixpath.dirname(root)
    parts = []
    for match in matches:
        body = with_retries(lambda m=match: fs.cat_file(m), f"read {match}", storage)
        parts.append([posixpath.relpath(match, root), sha256_bytes(body)])
    return "files:" + sha256_bytes(json.dumps(parts).encode())
