"""A stage's fingerprint: the sha256 of everything its output depends on, by content.

The identity payload holds the stage's name and version, its iteration, its inputs'
fingerprints, the identity of every model it reads, and its config keys with every path to a
model or data file replaced by that content's identity (config fields marked with
`MODEL_CONTENT` / `DATA_CONTENT`). No URI, run-directory path or absolute path enters it, so a
copied or moved run keeps its fingerprints, and two runs of a sweep that would compute the same
thing have equal ones. `_SUCCESS` keeps the payload, so a changed fingerprint can be explained.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from aipo_ray.config import RunConfig
from aipo_ray.config.base import content_kind, omitted_at_default
from aipo_ray.models import model_identity
from aipo_ray.storage.identity import content_identity

from .stage import Stage, StageContext

# Keys that say how to run, never what is computed: changing them (a longer timeout, more CPUs
# per replica, a resized cluster) must not invalidate finished stages. Sections such as
# `storage`, `ray` and `serve` are never a stage's config key in the first place.
PLACEMENT_KEYS = frozenset({
    "timeout_s", "max_retries", "max_failures", "checkpoint_every_steps", "cpus_per_replica",
    "cpus_per_worker", "engine_env",
    # http_judge: how hard to try and how to authenticate, not what the judge says
    "max_concurrency", "request_timeout_s", "request_retries", "api_key_env",
})
# Config values that name no content to hash.
_SPECIAL_MODELS = frozenset({"policy"})


def content_config(config: RunConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of `keys` (sections or dotted keys) with content references as identities."""
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = getattr(node, part)
        out[key] = _content_value(node, None, config)
    return out


def _content_value(value: Any, kind: str | None, config: RunConfig) -> Any:
    if isinstance(value, BaseModel):
        return {name: _content_value(getattr(value, name), content_kind(info), config)
                for name, info in type(value).model_fields.items()
                if name not in PLACEMENT_KEYS and not omitted_at_default(info, getattr(value, name))}
    if isinstance(value, list | tuple):
        return [_content_value(v, kind, config) for v in value]
    if kind and isinstance(value, str) and value not in _SPECIAL_MODELS:
        return _identity(kind, value, config)
    if isinstance(value, dict):
        return {k: _content_value(v, None, config) for k, v in value.items()}
    if hasattr(value, "get_secret_value"):
        return None
    return value


def _identity(kind: str, value: str, config: RunConfig) -> str:
    if kind == "model":
        return model_identity(value, config.storage)
    from aipo_ray.data.sources import resolve_source_uri

    return content_identity(resolve_source_uri(value), config.storage)


def identity_payload(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Everything `stage`'s output depends on at this iteration, as JSON-able data."""
    rd = ctx.run_dir
    inputs = {name: _fingerprint_of(ctx.success(name)) for name in stage.inputs}
    for name in stage.history_inputs:
        inputs[f"earlier {name}"] = [_fingerprint_of(rd.stage_success(j, name))
                                     for j in range(1, ctx.iteration)]
    in_round = ctx.in_sampling_round(stage.name)
    if in_round:  # a later round samples around what the earlier rounds of its iteration took
        for name in stage.round_history_inputs:
            inputs[f"earlier rounds {name}"] = [
                _fingerprint_of(ctx.in_round(r).success(name)) for r in range(1, ctx.round)]
    return {
        "stage": stage.name, "version": stage.version, "iteration": ctx.iteration,
        **({"round": ctx.round} if in_round else {}),
        "inputs": inputs,
        "models": {role: model_identity(uri, ctx.config.storage)
                   for role, uri in sorted(stage.models(ctx).items())},
        "config": content_config(ctx.config, tuple(stage.config_keys)),
        "extra": stage.fingerprint_extra(ctx),
    }


def _fingerprint_of(record: dict | None) -> str | None:
    return record.get("fingerprint") if record else None


def digest(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def fingerprint(stage: Stage, ctx: StageContext) -> str:
    """The sha256 of `identity_payload`: equal exactly when the output would be the same."""
    return digest(identity_payload(stage, ctx))


def explain_change(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Why a stage whose `_SUCCESS` held payload `old` must run again, in a user's words."""
    if old is None:
        return ["finished before fingerprints were explained (no identity in _SUCCESS)"]
    reasons = []
    if old.get("version") != new["version"]:
        reasons.append(f"stage version {old.get('version')} → {new['version']}")
    for name in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        if old.get("inputs", {}).get(name) != new["inputs"].get(name):
            reasons.append(f"input {name} changed")
    for role in sorted(set(old.get("models", {})) | set(new["models"])):
        if old.get("models", {}).get(role) != new["models"].get(role):
            reasons.append(f"model {role} changed")
    reasons += [f"config {key}: {a!r} → {b!r}"
                for key, (a, b) in leaf_changes(old.get("config", {}), new["config"]).items()]
    if old.get("extra") != new["extra"]:
        reasons.append("stage-specific inputs changed")
    return reasons or ["fingerprint differs"]


def leaf_changes(old: Any, new: Any, prefix: str = "") -> dict[str, list[Any]]:
    """{dotted key: [old value, new value]} for every leaf of two nested dicts that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, list[Any]] = {}
        for key in sorted(set(old) | set(new)):
            out.update(leaf_changes(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): [old, new]}
