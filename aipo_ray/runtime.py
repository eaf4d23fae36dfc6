"""Starting or joining Ray the same way from the CLI, `ray job submit`, the Python API and tests."""

from __future__ import annotations

import logging
import os

from aipo_ray.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig | None = None) -> bool:
    """Join a running cluster or start an embedded one. Returns True if this call started Ray.

    Under `ray job submit` RAY_ADDRESS is set and we join that cluster; `address: null` with no
    RAY_ADDRESS starts a local Ray capped to the configured CPUs and object store.
    """
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        _configure_data()
        return False
    kwargs: dict = {"runtime_env": cfg.runtime_env or None, "log_to_driver": True}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Local clusters in tests and on laptops run without token auth (Ray 2.60 default).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_memory, include_dashboard=False, **kwargs,
        )
    _configure_data()
    log.info("Ray resources: %s", ray.cluster_resources())
    return True


def _configure_data() -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    # Stage outputs are written in block order; keeping it makes part files deterministic.
    ctx.execution_options.preserve_order = True
