"""Resource asks of the stages, compared with the nodes of the connected Ray cluster.

Ray waits forever for an ask no node can meet ("The job may hang forever unless the cluster
scales up"). Each stage therefore says what it will ask (`ResourceAsk`), and the driver checks
every ask when a run starts and again before each stage (clusters change):

    check_cluster(asks_for_config(config))      # raises InfeasibleResourceError

An ask is a bundle of Ray resources per replica or worker ("CPU", "GPU", "memory" in bytes,
custom names) times a count. One bundle must fit on one node. A gang (a Ray Train worker group,
a fixed-size Ray Data actor pool: it waits for every member) must fit as a whole: its bundles
are identical, so filling the nodes first-fit, as many bundles per node as fit, is exact.

A cluster that can grow (an autoscaler with node types that can still add nodes) may meet an ask
later: there the check logs what the run waits for instead of raising. The detection reads the
autoscaler's state from the GCS; `AIPO_RAY_AUTOSCALING=1` (or `0`) overrides it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aipo_ray.config import RunConfig

log = logging.getLogger(__name__)

AUTOSCALING_ENV = "AIPO_RAY_AUTOSCALING"
GIB = 1024**3
# Ray accounts resources in units of 1/10000 (fractional CPUs and GPUs).
_UNITS = 10_000
_SHOWN_ALWAYS = ("CPU", "GPU", "memory")

FITS, WAITS, INFEASIBLE = "fits", "waits", "infeasible"


class InfeasibleResourceError(ValueError):
    """Asks that no node (or no set of nodes, for a gang) of the cluster can ever meet.

    `checks` holds every ask's verdict, so a caller can print the ones that fit as well.
    """

    def __init__(self, message: str, checks: Sequence[AskCheck] = ()):
        super().__init__(message)
        self.checks = list(checks)


@dataclass(frozen=True)
class ResourceAsk:
    """What a stage asks Ray for: `count` replicas or workers of `bundle` each.

    `key` is the config key a user would change; `resource_keys` names the key behind each
    resource of the bundle and `count_key` the one behind `count`, when they differ from `key`.
    `gang`: all `count` members must be placed at once (a Ray Train worker group, a fixed-size
    actor pool); otherwise one member suffices to make progress (vLLM's autoscaling pool).
    `what` names one member in human words ("a generation replica").
    """

    key: str
    bundle: dict[str, float]
    count: int = 1
    gang: bool = False
    what: str = "a replica"
    count_key: str | None = None
    resource_keys: dict[str, str] = field(default_factory=dict)

    @property
    def noun(self) -> str:
        """`what` without its article: "generation replica"."""
        first, _, rest = self.what.partition(" ")
        return rest if first in ("a", "an") and rest else self.what


@dataclass(frozen=True)
class AskCheck:
    """One ask's verdict against the nodes: FITS, WAITS (autoscaling) or INFEASIBLE."""

    ask: ResourceAsk
    status: str
    problem: str | None = None

    def describe(self) -> str:
        line = f"{self.status:<10} {describe_ask(self.ask)}"
        return f"{line}: {self.problem}" if self.problem else line


# --- asks of the default stages, from the config -------------------------------------------------


def _pool_ask(section: str, cfg: Any, what: str) -> ResourceAsk:
    """A fixed-size Ray Data actor pool (num_replicas × cpus/gpus_per_replica): a gang, since
    Ray Data waits for every actor of a fixed pool and never finishes without them."""
    bundle = {"CPU": float(cfg.cpus_per_replica)}
    if cfg.gpus_per_replica:
        bundle["GPU"] = float(cfg.gpus_per_replica)
    return ResourceAsk(
        key=f"{section}.gpus_per_replica" if cfg.gpus_per_replica else f"{section}.cpus_per_replica",
        bundle=bundle, count=cfg.num_replicas, gang=True, what=what,
        count_key=f"{section}.num_replicas",
        resource_keys={"CPU": f"{section}.cpus_per_replica", "GPU": f"{section}.gpus_per_replica"},
    )


def generation_asks(config: RunConfig) -> list[ResourceAsk]:
    """The generation engines (also self-instruct's): an hf actor pool, or vLLM placement groups.

    vLLM (ray.data.llm) runs an autoscaling pool of 1..num_replicas engines, so one engine must
    fit: its placement group of `tensor_parallel_size` bundles (PACK: one node or several).
    Shared engines (`generation.share_engine`, single-worker engines) are a fixed set of
    num_replicas actors that requests are dealt to round robin: all of them must fit.
    """
    cfg = config.generation
    if cfg.resolved_backend() != "vllm":
        return [_pool_ask("generation", cfg, "a generation replica")]
    from aipo_ray.generation.vllm_engine import _bundle, shares_engine  # what the engine asks

    on_gpu = cfg.gpus_per_replica > 0
    if shares_engine(cfg):
        count, count_key, what = cfg.num_replicas, "generation.num_replicas", "a shared vLLM engine"
    else:
        count, count_key = cfg.tensor_parallel_size, "generation.tensor_parallel_size"
        what = "a vLLM tensor-parallel worker"
    return [ResourceAsk(
        key="generation.gpus_per_replica" if on_gpu else "generation.cpus_per_replica",
        bundle={k: float(v) for k, v in _bundle(cfg).items()},
        count=count, gang=True, what=what, count_key=count_key,
        # On GPUs each worker holds one whole GPU and one CPU whatever the per-replica values.
        resource_keys=({"GPU": "generation.gpus_per_replica"} if on_gpu
                       else {"CPU": "generation.cpus_per_replica"}),
    )]


def ranking_asks(config: RunConfig) -> list[ResourceAsk]:
    """The ranker actor pool (ranking.num_replicas × cpus/gpus_per_replica)."""
    return [_pool_ask("ranking", config.ranking, "a ranking replica")]


def reference_asks(config: RunConfig) -> list[ResourceAsk]:
    """The reference log-prob actor pool (reference.num_replicas × cpus/gpus_per_replica)."""
    return [_pool_ask("reference", config.reference, "a reference replica")]


def training_asks(config: RunConfig) -> list[ResourceAsk]:
    """The Ray Train worker group: num_workers × {CPU: cpus_per_worker, GPU: gpus_per_worker
    when use_gpu}, placed together (trainer.py's ScalingConfig; its controller asks 0 CPU)."""
    t = config.training
    bundle = {"CPU": float(t.cpus_per_worker)}
    if t.use_gpu:
        bundle["GPU"] = float(t.gpus_per_worker)
    return [ResourceAsk(
        key="training.gpus_per_worker" if t.use_gpu else "training.cpus_per_worker",
        bundle=bundle, count=t.num_workers, gang=True,
        what="a training worker (training.use_gpu=true)" if t.use_gpu else "a training worker",
        count_key="training.num_workers",
        resource_keys={"CPU": "training.cpus_per_worker", "GPU": "training.gpus_per_worker"},
    )]


def asks_for_config(config: RunConfig) -> list[ResourceAsk]:
    """Every ask of the default chain: self-instruct and generation, ranking, reference (when
    the loss needs one) and training; asks that two stages share appear once."""
    from aipo_ray.training.trainer import needs_reference

    asks = [*generation_asks(config), *ranking_asks(config)]
    if needs_reference(config):
        asks += reference_asks(config)
    return _unique([*asks, *training_asks(config)])


def stage_asks(stages: Iterable[Any], config: RunConfig) -> list[ResourceAsk]:
    """The asks of a chain of stages (anything with `resource_asks(config)`), each once."""
    return _unique(ask for stage in stages for ask in stage.resource_asks(config))


def _unique(asks: Iterable[ResourceAsk]) -> list[ResourceAsk]:
    out: list[ResourceAsk] = []
    for ask in asks:
        if ask not in out:
            out.append(ask)
    return out


# --- the cluster ---------------------------------------------------------------------------------


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster (`ray.nodes()`)."""
    import ray

    return node_resources(ray.nodes())


def node_resources(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Resource dicts of the alive nodes: accepts `ray.nodes()` entries or plain resource dicts."""
    out = []
    for node in nodes:
        if "Resources" in node:
            if not node.get("Alive", True):
                continue
            node = node["Resources"]
        out.append({k: float(v) for k, v in node.items()})
    return out


def autoscaling_node_types() -> list[str]:
    """Names of the node types an autoscaler can still add; empty when the cluster cannot grow.

    Read from the GCS: the cluster config that autoscaler v2 and KubeRay report (node groups
    whose max_count exceeds min_count, as Ray Data decides), else the node types in autoscaler
    v1's status report (whether they are at their maximum is not published). Neither is a public
    API: `AIPO_RAY_AUTOSCALING=1` says the cluster grows, `=0` that it does not, whatever the
    GCS says.
    """
    override = os.environ.get(AUTOSCALING_ENV, "").strip().lower()
    if override in ("1", "true", "yes"):
        return [f"{AUTOSCALING_ENV}={override}"]
    if override in ("0", "false", "no"):
        return []
    try:
        return _node_groups_that_grow() or _autoscaler_v1()
    except Exception as e:  # private GCS state: its shape may change between Ray versions
        log.debug("cannot read the autoscaler's state (%s); assuming a fixed cluster", e)
        return []


def _node_groups_that_grow() -> list[str]:
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if not config:
        return []
    return [group.name or "unnamed" for group in config.node_group_configs
            if group.resources and group.max_count != 0
            and (group.max_count == -1 or group.max_count > group.min_count)]


def _autoscaler_v1() -> list[str]:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return []
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    return launchable_node_types(report)


def launchable_node_types(report: Mapping[str, Any]) -> list[str]:
    """Node types of an autoscaler v1 report, less the mirrors of existing nodes.

    `ray start --head` without an autoscaling config runs a read-only autoscaler whose only
    node types are `node_<node id>`, one per node already there: such a cluster cannot grow.
    """
    node_ids = set(report.get("node_type_mapping") or {})
    types = {*(report.get("active_nodes") or {}), *(report.get("idle_nodes") or {}),
             *(report.get("pending_launches") or {}), *(report.get("node_type_mapping") or {}
                                                        ).values()}
    return sorted(t for t in types if not (t.startswith("node_") and t[5:] in node_ids))


# --- the check -----------------------------------------------------------------------------------


def check_asks(asks: Sequence[ResourceAsk], nodes: Iterable[Mapping[str, Any]],
               autoscaling: bool | Sequence[str] = False) -> list[AskCheck]:
    """Each ask's verdict against `nodes` (`ray.nodes()` entries or resource dicts).

    Raises InfeasibleResourceError naming every ask that no node (or, for a gang, no placement
    on all nodes together) can meet. With `autoscaling` (True, or the node types that can be
    added) such an ask is logged as one the run waits for and returned with status WAITS.
    """
    nodes = node_resources(nodes)
    checks = []
    for ask in asks:
        problem = ask_problem(ask, nodes)
        status = FITS if problem is None else (WAITS if autoscaling else INFEASIBLE)
        checks.append(AskCheck(ask, status, problem))
    for check in checks:
        if check.status == WAITS:
            log.warning("%s; the run waits for the autoscaler to add a node%s", check.problem,
                        _named_types(autoscaling))
    bad = [c for c in checks if c.status == INFEASIBLE]
    if bad:
        lines = "\n".join(f"  - {c.problem}" for c in bad)
        raise InfeasibleResourceError(
            f"{len(bad)} resource ask(s) that the Ray cluster can never meet (Ray would wait "
            f"forever):\n{lines}", checks)
    return checks


def check_cluster(asks: Sequence[ResourceAsk]) -> list[AskCheck]:
    """`check_asks` against the connected cluster's nodes and autoscaler (before a stage starts
    its actors or workers); needs `ray.init` first."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("check_cluster needs a connected Ray: call aipo_ray.runtime.init_ray "
                           "(or ray.init) first")
    return check_asks(asks, cluster_nodes(), autoscaling_node_types())


def copies_that_fit(ask: ResourceAsk, nodes: Iterable[Mapping[str, Any]]) -> float:
    """How many complete copies of `ask` (all `count` members each) the empty nodes hold at
    once: `bundles_per_node` summed over the nodes, divided by `count` (inf: it asks nothing)."""
    placeable = sum(bundles_per_node(ask.bundle, node_resources(nodes)))
    return placeable if math.isinf(placeable) else placeable // max(ask.count, 1)


def bundles_per_node(bundle: Mapping[str, float], nodes: Iterable[Mapping[str, Any]]
                     ) -> list[float]:
    """How many copies of `bundle` fit on each empty node (inf for a bundle that asks nothing)."""
    return [_bundles_fitting(bundle, node) for node in node_resources(nodes)]


def runs_that_fit(configs: Iterable[RunConfig], nodes: Iterable[Mapping[str, Any]]) -> float:
    """How many of these runs can go side by side with none waiting for resources: each run's
    stages go one at a time, so what counts is, for every ask of every run, how many copies of
    it the cluster holds at once; the smallest of those numbers (at least 1; inf: nothing asked).
    Bundles of different asks are not packed together, so this errs towards fewer runs."""
    nodes = node_resources(nodes)
    fits = [copies_that_fit(ask, nodes) for config in configs for ask in asks_for_config(config)]
    return max(1, min(fits, default=math.inf))


def ask_problem(ask: ResourceAsk, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """None when the ask fits the nodes; else what is wrong, naming the keys and the largest node."""
    per_node = bundles_per_node(ask.bundle, nodes)
    if not any(per_node):
        keys = _culprit_keys(ask, nodes)
        return (f"{keys} asks {format_resources(ask.bundle)} per {ask.noun}, more than any node "
                f"has ({_cluster_summary(ask, nodes)}); lower {keys} or run on a cluster with a "
                "larger node")
    needed = ask.count if ask.gang else 1
    placeable = sum(per_node)
    if placeable >= needed:
        return None
    count_key = ask.count_key or ask.key
    return (f"{count_key} asks {ask.count} × {ask.noun} ({format_resources(ask.bundle)} each), "
            f"placed together, but the nodes hold at most {placeable} "
            f"({_cluster_summary(ask, nodes)}); lower {count_key} to {placeable} or add nodes")


def _bundles_fitting(bundle: Mapping[str, float], node: Mapping[str, float]) -> float:
    """How many copies of `bundle` fit on an empty `node` (inf for a bundle that asks nothing)."""
    counts = [_units(node.get(name, 0.0)) // _units(amount)
              for name, amount in bundle.items() if _units(amount) > 0]
    return min(counts) if counts else math.inf


def _units(amount: float) -> int:
    return round(amount * _UNITS)


def _culprit_keys(ask: ResourceAsk, nodes: Sequence[Mapping[str, float]]) -> str:
    """The keys of the resources that exceed every node; all of the bundle's when only their
    combination does (each fits some node, never together)."""
    short = [name for name, amount in ask.bundle.items()
             if amount > 0 and all(_units(n.get(name, 0.0)) < _units(amount) for n in nodes)]
    names = short or [name for name, amount in ask.bundle.items() if amount > 0]
    keys = dict.fromkeys(ask.resource_keys.get(name, ask.key) for name in names)
    return ", ".join(keys)


def _cluster_summary(ask: ResourceAsk, nodes: Sequence[Mapping[str, float]]) -> str:
    if not nodes:
        return "the cluster has no alive node"
    largest = max(nodes, key=lambda n: tuple(n.get(r, 0.0) for r in _SHOWN_ALWAYS))
    shown = [*_SHOWN_ALWAYS, *(r for r in ask.bundle if r not in _SHOWN_ALWAYS)]
    node_word = "node" if len(nodes) == 1 else "nodes"
    return (f"{len(nodes)} {node_word}, largest node: "
            f"{format_resources({r: largest.get(r, 0.0) for r in shown}, keep_zero=True)}")


def format_resources(resources: Mapping[str, float], keep_zero: bool = False) -> str:
    """`4 CPU, 1 GPU, 9.1 GiB memory`: CPU, GPU and memory first, custom resources after."""
    order = [*(r for r in _SHOWN_ALWAYS if r in resources),
             *sorted(r for r in resources if r not in _SHOWN_ALWAYS)]
    parts = []
    for name in order:
        amount = resources[name]
        if amount or keep_zero:
            parts.append(f"{amount / GIB:.1f} GiB memory" if name == "memory"
                         else f"{_number(amount)} {name}")
    return ", ".join(parts) or "nothing"


def _number(amount: float) -> str:
    return str(int(amount)) if float(amount).is_integer() else f"{amount:g}"


def describe_ask(ask: ResourceAsk) -> str:
    """`training.num_workers: 2 × training worker (1 CPU each), placed together`."""
    if ask.count == 1:
        return f"{ask.key}: {ask.what} of {format_resources(ask.bundle)}"
    together = "placed together" if ask.gang else "at least one"
    return (f"{ask.count_key or ask.key}: {ask.count} × {ask.noun} "
            f"({format_resources(ask.bundle)} each), {together}")


def _named_types(autoscaling: bool | Sequence[str]) -> str:
    if isinstance(autoscaling, bool) or not autoscaling:
        return ""
    return f" (node types that can grow: {', '.join(autoscaling)})"
