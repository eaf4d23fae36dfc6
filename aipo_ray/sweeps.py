"""Sweeps: one base config, many variants, each an ordinary run directory under one root.

A sweep file:

```yaml
base: configs/tiny_cpu.yaml          # relative to the sweep file
overrides: [iterations=2]            # applied to every variant
variants:                            # explicit variants: name -> overrides
  dpo: [loss.name=dpo]
  aipo: [loss.name=aipo]
grid:                                # and/or a cartesian grid (crossed with `variants`)
  training.learning_rate: [5e-7, 1e-6]
max_concurrent: 2                    # variants running at once (default: as many as fit)
```

Each variant runs in `<root>/<variant>/` (so `aipo status/report/eval/resume` work on it), and
running the sweep again resumes every variant. Variants share work: a stage whose fingerprint
equals a finished stage of another variant takes its output (`pipeline/reuse.py`), so loss and
training variants compute iteration 1's data half once. A failed variant does not stop the
others; `<root>/sweep.json` and the returned summary name it with its error.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from aipo_ray.config import ConfigError, RunConfig, load_config
from aipo_ray.config.base import StrictModel, format_validation_error
from aipo_ray.config.run import load_yaml

log = logging.getLogger(__name__)
SWEEP_JSON = "sweep.json"


class SweepSpec(StrictModel):
    base: str = Field(description="base config, relative to the sweep file")
    overrides: list[str] = Field(default_factory=list, description="applied to every variant")
    variants: dict[str, list[str]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    max_concurrent: int | None = Field(
        default=None, ge=1,
        description="variants running at once; default: as many as the cluster holds with none "
        "waiting for resources (resources.runs_that_fit)",
    )


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


@dataclass
class VariantResult:
    name: str
    run_dir: str
    status: str  # "finished" or "failed"
    seconds: float
    latest_model: str | None = None
    error: str | None = None


def load_sweep(path: str | Path) -> SweepSpec:
    try:
        data = load_yaml(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([f"cannot read sweep file: {e}"], str(path)) from None
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, SweepSpec), str(path)) from None


def expand_variants(spec: SweepSpec) -> list[Variant]:
    """Explicit variants crossed with the grid; a grid alone, or explicit ones alone."""
    explicit = [Variant(name, tuple(ov)) for name, ov in spec.variants.items()] or [Variant("", ())]
    keys = list(spec.grid)
    points = list(itertools.product(*(spec.grid[k] for k in keys))) if keys else [()]
    variants = []
    for base in explicit:
        for point in points:
            assignments = [f"{k}={_yaml_value(v)}" for k, v in zip(keys, point, strict=True)]
            parts = [base.name] if base.name else []
            parts += [_slug(k, v) for k, v in zip(keys, point, strict=True)]
            variants.append(Variant("_".join(parts) or "base", (*base.overrides, *assignments)))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError([f"sweep variants have clashing names: {names}"])
    return variants


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _slug(key: str, value: Any) -> str:
    """`training.learning_rate`, 1e-6 -> `learning_rate-1e-06`: readable and path-safe."""
    text = f"{key.rsplit('.', 1)[-1]}-{value}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


def variant_configs(path: str | Path, root: str | None = None,
                    overrides: list[str] | None = None) -> dict[str, RunConfig]:
    """Every variant's validated config, run directory `<root>/<variant>`; errors up front."""
    spec = load_sweep(path)
    base = Path(path).parent / spec.base
    root = root or f"runs/{Path(path).stem}"
    configs = {}
    for variant in expand_variants(spec):
        config = load_config(base, [*spec.overrides, *(overrides or []), *variant.overrides])
        configs[variant.name] = config.model_copy(update={
            "run_dir": f"{root.rstrip('/')}/{variant.name}", "name": f"{config.name}-{variant.name}",
        })
    return configs


def run_sweep(path: str | Path, root: str | None = None, overrides: list[str] | None = None,
              stages=None) -> list[VariantResult]:
    """Run (or resume) every variant of the sweep at `path`; see the module docstring."""
    from aipo_ray.pipeline.driver import run
    from aipo_ray.pipeline.reuse import SharedStages
    from aipo_ray.runtime import init_ray
    from aipo_ray.storage import RunDir

    spec = load_sweep(path)
    configs = variant_configs(path, root, overrides)
    first = next(iter(configs.values()))
    init_ray(first.ray)
    shared = SharedStages([RunDir(c.resolved_run_dir, c.storage) for c in configs.values()])

    def one(name: str, config: RunConfig) -> VariantResult:
        started = time.time()
        try:
            summary = run(config, stages=stages, shared=shared)
        except Exception as e:  # one variant's failure must not stop the others
            log.error("sweep variant %s failed: %s", name, e)
            return VariantResult(name, config.resolved_run_dir, "failed", time.time() - started,
                                 error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        return VariantResult(name, summary.run_dir, "finished", time.time() - started,
                             latest_model=summary.latest_model)

    concurrent = _concurrency(spec, list(configs.values()))
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        results = list(pool.map(lambda item: one(*item), configs.items()))
    _write_summary(first, root or f"runs/{Path(path).stem}", results)
    return results


def _concurrency(spec: SweepSpec, configs: list[RunConfig]) -> int:
    """`max_concurrent`, or as many variants as the connected cluster fits side by side."""
    from aipo_ray.resources import cluster_nodes, runs_that_fit

    if spec.max_concurrent is not None:
        return min(spec.max_concurrent, len(configs))
    fits = runs_that_fit(configs, cluster_nodes())
    concurrent = int(min(fits, len(configs)))
    log.info("sweep: %d of %d variants at once (as many as the cluster fits; set "
             "max_concurrent to choose)", concurrent, len(configs))
    return concurrent


def _write_summary(config: RunConfig, root: str, results: list[VariantResult]) -> None:
    from aipo_ray.storage import RunDir

    RunDir(root, config.storage).write_json(SWEEP_JSON, {
        "variants": [asdict(r) for r in results],
        "failed": [r.name for r in results if r.status == "failed"],
    })
