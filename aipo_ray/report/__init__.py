"""What a run did: per-iteration statistics, plots, one HTML page, and win-rate evaluation.

Heavy pieces (matplotlib, the generation component) are imported only by the function that
needs them, so `aipo_ray.report.stats` stays a light, pure module.
"""

from __future__ import annotations


def write_report(run_dir: str, output: str | None = None, storage=None) -> str:
    """Write `<output>/index.html` (self-contained) and PNG plots of a run; return the page's URI."""
    from .page import write_report as _write

    return _write(run_dir, output=output, storage=storage)


def compare_runs(run_dirs: list[str], output: str | None = None, evaluate: bool = True,
                 overrides: list[str] | None = None, **kwargs) -> dict:
    """The comparative report of several runs (a sweep's variants): `index.html`, PNGs and
    `compare.json` under `output` (default the sweep root's `compare/`); returns compare.json's
    content. See report/compare.py and docs/report.md."""
    from .compare import compare_runs as _compare

    return _compare(run_dirs, output=output, evaluate=evaluate, overrides=overrides, **kwargs)


__all__ = ["compare_runs", "write_report"]
