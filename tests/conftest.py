"""Shared fixtures: a local Ray cluster, real small models, run directories.

Fixture modules live in tests/fixtures/ and are registered here as plugins.
"""

import os

# Local test clusters run without token auth, offline, quietly.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytest_plugins = [
    "tests.fixtures.ray_cluster",
    "tests.fixtures.models",
    "tests.fixtures.s3",
    "tests.fixtures.multinode",
]
