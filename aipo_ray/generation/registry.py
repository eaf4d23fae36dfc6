"""Generation backends by name: `@register_generator("name")` on a `Generator` function.

`generation.backend` is checked against the registered names (plus `auto`); a backend module
is imported only when a name is first looked up, and the `vllm` module imports vLLM only inside
its engine actors, so listing the backends costs no engine.
"""

from __future__ import annotations

from aipo_ray.registry import Registry

from .base import Generator

GENERATORS: Registry[Generator] = Registry(
    "generation backend",
    builtin_modules=("aipo_ray.generation.hf", "aipo_ray.generation.vllm_engine"),
    entry_point_group="aipo_ray.generators",
)
register_generator = GENERATORS.register


def available_generators() -> list[str]:
    return GENERATORS.names()
