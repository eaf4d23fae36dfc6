"""Turn whatever the config names as a model into something `from_pretrained` can open."""

from __future__ import annotations

import json
import os

from aipo_ray.config import StorageConfig
from aipo_ray.storage import filesystem, is_remote

from .builtin import builtin_model_path, is_builtin

# models/iter_000 of a run holds only this file: the base model stays where the user keeps it.
POINTER = "pointer.json"


def resolve_model_path(uri: str, storage: StorageConfig | None = None) -> str:
    """A local directory (or hub name) for a builtin name, a local dir, a run's base-model pointer,
    or a committed checkpoint URI (downloaded and verified against its manifest)."""
    if is_builtin(uri):
        return builtin_model_path(uri)
    fs, path = filesystem(uri, storage)
    pointer = path.rstrip("/") + "/" + POINTER
    if fs.exists(pointer):
        target = json.loads(fs.cat_file(pointer))["path"]
        return resolve_model_path(target, storage)
    if fs.exists(path.rstrip("/") + "/manifest.json") or is_remote(uri):
        from aipo_ray.storage.checkpoint import materialize_checkpoint

        return materialize_checkpoint(uri, storage)
    if os.path.isdir(os.path.expanduser(uri)):
        return os.path.expanduser(uri)
    return uri  # a hub name; transformers resolves it (online, on a user's machine)
