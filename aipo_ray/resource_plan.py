"""`aipo plan CONFIG [--address ADDR]`: per stage, the actors or workers it starts, what each asks,
on which nodes one fits, and the run's verdict, through the same check the driver runs before
each stage (`aipo_ray.resources.check_asks`), plus the GPU-hours of one iteration where a model
of them is at hand.

Without an address the nodes are this machine as `aipo run` would start Ray on it (`ray.num_cpus`,
`ray.num_gpus`, else what the machine has); with one, the alive nodes of that cluster and its
autoscaler.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aipo_ray.config import RunConfig
from aipo_ray.resources import (
    AskCheck,
    InfeasibleResourceError,
    ResourceAsk,
    ask_problem,
    check_asks,
    describe_ask,
    format_resources,
    node_resources,
)


@dataclass(frozen=True)
class StagePlan:
    """One stage's asks, each with its verdict and the indices of the nodes that hold a member."""

    stage: str
    checks: list[AskCheck]
    hosts: list[list[int]]


def plan(config: RunConfig, nodes: Sequence[Mapping[str, Any]],
         autoscaling: bool | Sequence[str] = False) -> list[StagePlan]:
    """The plan of iteration 1's chain against `nodes` (`ray.nodes()` entries or resource dicts)."""
    from aipo_ray.pipeline.registry import default_stages

    nodes = node_resources(nodes)
    out = []
    for stage in default_stages(config, 1):
        asks = stage.resource_asks(config)
        if not asks:
            continue
        try:
            checks = check_asks(asks, nodes, autoscaling)
        except InfeasibleResourceError as e:
            checks = e.checks
        out.append(StagePlan(stage.name, checks, [_hosts(a, nodes) for a in asks]))
    return out


def _hosts(ask: ResourceAsk, nodes: Sequence[Mapping[str, float]]) -> list[int]:
    """Nodes on which one member of the ask fits (the check's own rule, for a single member)."""
    one = dataclasses.replace(ask, count=1, gang=False)
    return [i for i, node in enumerate(nodes) if ask_problem(one, [node]) is None]


def local_nodes(config: RunConfig) -> list[dict[str, float]]:
    """This machine as one node, as `init_ray` would start it from `config.ray`."""
    import psutil
    import torch

    gpus = config.ray.num_gpus if config.ray.num_gpus is not None else torch.cuda.device_count()
    return [{"CPU": float(config.ray.num_cpus or os.cpu_count() or 1), "GPU": float(gpus),
             "memory": float(psutil.virtual_memory().total)}]


def iteration_gpu_hours(config: RunConfig) -> dict[str, float] | None:
    """GPU-hours of one paper-scale iteration (benchmarks/scaling.py: 20K pairs, N=5, 12B) on as
    many GPUs as the config trains on; None on CPU or where the benchmarks are not importable
    (an installed package without the repository)."""
    t = config.training
    gpus = int(t.num_workers * t.gpus_per_worker) if t.use_gpu else 0
    if gpus == 0:
        return None
    try:
        from benchmarks.scaling import iteration_seconds, measured_inputs
    except ImportError:
        return None
    stages = iteration_seconds(gpus, measured_inputs())
    return {"gpus": gpus, "wall_hours": sum(stages.values()) / 3600,
            "gpu_hours": gpus * sum(stages.values()) / 3600}


def format_plan(plans: Sequence[StagePlan], nodes: Sequence[Mapping[str, Any]],
                gpu_hours: Mapping[str, float] | None) -> str:
    nodes = node_resources(nodes)
    lines = [f"nodes: {len(nodes)}"]
    lines += [f"  [{i}] {format_resources(n)}" for i, n in enumerate(nodes)]
    for p in plans:
        lines.append(f"{p.stage}:")
        for check, hosts in zip(p.checks, p.hosts, strict=True):
            where = ", ".join(f"[{i}]" for i in hosts) or "no node"
            lines.append(f"  {check.status:<10} {describe_ask(check.ask)}; one fits on {where}")
            if check.problem:
                lines.append(f"             {check.problem}")
    if gpu_hours:
        lines.append(f"one iteration at paper scale (benchmarks/scaling.py) on {gpu_hours['gpus']:g} "
                     f"GPUs: {gpu_hours['wall_hours']:.2f} h wall, {gpu_hours['gpu_hours']:.1f} "
                     "GPU-hours")
    else:
        lines.append("GPU-hours: none (training on CPU) or no benchmark model importable")
    return "\n".join(lines)


def infeasible(plans: Sequence[StagePlan]) -> bool:
    from aipo_ray.resources import INFEASIBLE

    return any(c.status == INFEASIBLE for p in plans for c in p.checks)
