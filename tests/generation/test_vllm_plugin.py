"""The vLLM plugin that spares our engine processes the heap scan of interpreter exit."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from aipo_ray.generation.vllm_plugin import FAST_EXIT_ENV

# Garbage in a reference cycle whose finaliser prints: only a garbage collection frees it, and
# the interpreter's exit runs one unless the heap was frozen first.
CHILD = """
import sys
from aipo_ray.generation.vllm_plugin import register

class Node:
    def __del__(self):
        print("collected", flush=True)

a, b = Node(), Node()
a.other, b.other = b, a
del a, b
register()
register()  # vLLM may load a plugin more than once
print("exiting", flush=True)
print("to stderr", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("fast_exit", [False, True])
def test_exit_skips_the_final_collection_only_where_the_engine_env_asks(fast_exit):
    env = {k: v for k, v in os.environ.items() if k != FAST_EXIT_ENV}
    if fast_exit:
        env[FAST_EXIT_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["exiting"] + ([] if fast_exit else ["collected"] * 2)
    assert out.stderr.strip() == "to stderr"  # what the process wrote before its exit stays


def test_vllm_finds_the_plugin_among_its_general_plugins():
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("aipo_fast_exit") == "aipo_ray.generation.vllm_plugin:register"


def test_our_engines_ask_for_it_and_a_user_setting_cannot_drop_other_defaults():
    from aipo_ray.config.generation import GenerationConfig
    from aipo_ray.generation.vllm_engine import engine_env

    assert engine_env(GenerationConfig())[FAST_EXIT_ENV] == "1"
    assert engine_env(GenerationConfig(engine_env={FAST_EXIT_ENV: "0"}))[FAST_EXIT_ENV] == "0"
