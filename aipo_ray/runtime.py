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

    from aipo_ray.console import verbose

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        _configure_data()
        return False
    # Workers' output stays in the Ray session's log files unless asked for: on the console it
    # buries the stage lines under engine start-up logs.
    kwargs: dict = {"runtime_env": cfg.runtime_env or None,
                    "log_to_driver": cfg.log_to_driver or verbose()}
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
    log.info("Ray resources: %s; Ray logs: %s", ray.cluster_resources(), ray_logs_dir())
    return True


def ray_logs_dir() -> str | None:
    """The connected Ray session's log directory (worker, actor and Ray Data logs)."""
    try:
        from ray._private.worker import global_worker

        return f"{global_worker.node.get_session_dir_path()}/logs"
    except Exception:  # not connected, or Ray moved the private API
        return None


def _configure_data() -> None:
    import ray

    from aipo_ray.console import verbose

    ctx = ray.data.DataContext.get_current()
    # Stage outputs are written in block order; keeping it makes part files deterministic.
    ctx.execution_options.preserve_order = True
    # Ray Data's progress bars and operator dumps are for -v; the stage lines say what runs.
    ctx.enable_progress_bars = verbose()
    ctx.print_on_execution_start = verbose()
