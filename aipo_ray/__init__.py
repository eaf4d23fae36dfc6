"""aipo-ray: iterative preference optimization (AIPO and friends) as a Ray pipeline."""

__version__ = "0.1.0"


def run(config, stages=None, **kwargs):
    """Run T iterations (see aipo_ray.pipeline.run). Imported lazily: Ray is heavy."""
    from aipo_ray.pipeline import run as _run

    return _run(config, stages=stages, **kwargs)


def sweep(path, root=None, overrides=None, stages=None):
    """Run (or resume) every variant of a sweep file (see aipo_ray.sweeps)."""
    from aipo_ray.sweeps import run_sweep

    return run_sweep(path, root=root, overrides=overrides, stages=stages)


__all__ = ["__version__", "run", "sweep"]
