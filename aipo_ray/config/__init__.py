"""Pydantic v2 config of a run: YAML file + `key.sub=value` overrides, strict validation."""

from .base import ConfigError, StrictModel
from .data import FilterConfig, PairsConfig, PromptsConfig, PromptSourceConfig, SelfInstructConfig
from .generation import GenerationConfig
from .model import ModelConfig
from .ranking import RankingConfig
from .run import RunConfig, apply_overrides, build_config, load_config, parse_override
from .runtime import EvalConfig, RayConfig, ServeConfig
from .storage import StorageConfig
from .training import LossConfig, ReferenceConfig, TrainingConfig

__all__ = [
    "ConfigError",
    "EvalConfig",
    "FilterConfig",
    "GenerationConfig",
    "LossConfig",
    "ModelConfig",
    "PairsConfig",
    "PromptSourceConfig",
    "PromptsConfig",
    "RankingConfig",
    "RayConfig",
    "ReferenceConfig",
    "RunConfig",
    "SelfInstructConfig",
    "ServeConfig",
    "StorageConfig",
    "StrictModel",
    "TrainingConfig",
    "apply_overrides",
    "build_config",
    "load_config",
    "parse_override",
]
