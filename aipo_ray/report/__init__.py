"""What a run did: per-iteration statistics, plots, one HTML page, and win-rate evaluation.

Heavy pieces (matplotlib, the generation component) are imported only by the function that
needs them, so `aipo_ray.report.stats` stays a light, pure module.
"""

from __future__ import annotations


def write_report(run_dir: str, output: str | None = None, storage=None) -> str:
    """Write `<output>/index.html` (self-contained) and PNG plots of a run; return the page's URI."""
    from .page import write_report as _write

    return _write(run_dir, output=output, storage=storage)


__all__ = ["write_report"]
