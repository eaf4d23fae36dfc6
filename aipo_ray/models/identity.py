"""The identity of a model reference: what the weights are, not where they are.

- a committed checkpoint (local or s3://): the sha256 of its manifest, checked against the
  sha256 that `_COMMITTED` recorded (aipo_ray.storage.checkpoint.checkpoint_identity);
- a run's base-model pointer (`models/iter_000/pointer.json`): the identity of its target;
- `builtin:NAME`: the sha256 of the file the package ships;
- a local directory: the sha256 of its manifest, computed once and cached (storage.identity);
- anything else is a hub name: `hf:<name>@<commit>` with the commit the local hub cache
  resolved for it (its `refs/main`), or `hf:<name>` when the cache has never seen it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aipo_ray.config import StorageConfig
from aipo_ray.storage import filesystem, is_remote, with_retries
from aipo_ray.storage.checkpoint import COMMITTED, MANIFEST, checkpoint_identity
from aipo_ray.storage.identity import local_dir_identity, local_file_identity

from .builtin import builtin_file, is_builtin
from .resolve import POINTER


def model_identity(uri: str, storage: StorageConfig | None = None) -> str:
    """A string naming the content of the model at `uri` (see the module docstring)."""
    if is_builtin(uri):
        return local_file_identity(builtin_file(uri))
    fs, path = filesystem(uri, storage)
    root = path.rstrip("/")

    def exists(name: str) -> bool:
        return with_retries(lambda: fs.exists(f"{root}/{name}"), f"stat {uri}/{name}", storage)

    if exists(POINTER):
        target = json.loads(with_retries(lambda: fs.cat_file(f"{root}/{POINTER}"),
                                         f"read {uri}/{POINTER}", storage))["path"]
        return model_identity(target, storage)
    if exists(COMMITTED) or exists(MANIFEST) or is_remote(uri):
        return checkpoint_identity(uri, storage)
    local = os.path.expanduser(uri.removeprefix("file://"))
    if os.path.isdir(local):
        return local_dir_identity(local)
    if uri.startswith(("/", "./", "../", "~", "file://")):
        raise FileNotFoundError(f"model {uri!r}: no such directory (nor a committed checkpoint)")
    return hub_identity(uri)


def hub_identity(name: str) -> str:
    """`hf:<name>@<commit>` from the local hub cache's `refs/main`, else `hf:<name>`."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - transformers always brings it
        return f"hf:{name}"
    ref = Path(HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs" / "main"
    try:
        return f"hf:{name}@{ref.read_text().strip()}"
    except OSError:
        return f"hf:{name}"
