"""Shared pieces of the config models: strict base class and readable errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

# Markers on fields that name content (a model, a data file): stage fingerprints replace their
# value by the content's identity, so a path never decides whether work is redone.
MODEL_CONTENT = {"content": "model"}
DATA_CONTENT = {"content": "data"}


# An option added after runs exist, that leaves the output unchanged at its default: at the
# default it is left out of the stage fingerprints, so finished stages of those runs stay valid.
OMIT_AT_DEFAULT = {"omit_at_default": True}


def omitted_at_default(field, value) -> bool:
    """Whether a pydantic FieldInfo marked OMIT_AT_DEFAULT holds its default."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("omit_at_default")) and value == field.default


def content_kind(field) -> str | None:
    """'model', 'data' or None for a pydantic FieldInfo."""
    extra = field.json_schema_extra
    return extra.get("content") if isinstance(extra, dict) else None


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are re-validated on assignment."""

    # NaN passes no bound check that would catch it later (nan > 0 is False, but so is nan <= 0).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


class ConfigError(ValueError):
    """A config that cannot run; the message names every bad key and what it accepts."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config{where}:\n{lines}")


def _parent_model(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk `loc` through nested models to the model that holds its last key."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        current = _first_model(field.annotation)
        if current is None:
            return None
    return current


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    parent = _parent_model(model, loc)
    return sorted(parent.model_fields) if parent is not None else None


def _is_secret(model: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    """True when `loc` names a SecretStr field, whose bad value must not be echoed back."""
    parent = _parent_model(model, loc)
    field = parent.model_fields.get(loc[-1]) if parent is not None and loc else None
    if field is None:
        return False
    return field.annotation is SecretStr or SecretStr in getattr(field.annotation, "__args__", ())


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """Turn pydantic's errors into one line per key: `training.learning_rate: ... (got -1)`."""
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif _is_secret(model, loc):
            msg = f"{msg} (value hidden: secret)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        problems.append(f"{key}: {msg}")
    return problems
