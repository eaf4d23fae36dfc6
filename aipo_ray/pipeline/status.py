"""What a run directory holds right now: iterations, stages, rows, checkpoints, elapsed time."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from aipo_ray.console import describe_progress
from aipo_ray.storage import MODELS, RUN_JSON, RunDir, read_success

from .registry import stage_order
from .sharded import PROGRESS

_ITER = re.compile(r"iter_(\d{3,})$")


class NotARunDirectory(FileNotFoundError):
    """The path holds no run.json: not a run directory (or not one yet)."""


def run_status(run_dir: RunDir) -> dict[str, Any]:
    """A JSON-able summary in pipeline order; works on a run that is still in progress.

    Stages of the configured chain that have not started are listed as pending.
    """
    if not run_dir.exists(RUN_JSON):
        raise NotARunDirectory(f"{run_dir.uri}: no {RUN_JSON}; not a run directory (`aipo run` "
                               "creates one)")
    meta = run_dir.read_json(RUN_JSON)
    config = meta.get("config", {})
    info: dict[str, Any] = {
        "run_dir": run_dir.uri, "latest_model": run_dir.latest_model(), "name": config.get("name"),
        "iterations_planned": config.get("iterations"), "started_at": meta.get("started_at"),
        "config_changes": len(meta.get("history") or []),
    }
    if meta.get("started_at"):
        started = datetime.fromisoformat(meta["started_at"])
        info["elapsed_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    chain = _configured_chain(config)
    info["iterations"] = [{"iteration": it, "stages": _iteration_stages(run_dir, it, chain)}
                          for it in _iteration_numbers(run_dir)]
    info["checkpoints"] = _checkpoints(run_dir)
    info["eta_s"] = _run_eta(info["iterations"], chain, info.get("iterations_planned"))
    report = run_dir.path("report", "index.html")
    info["report"] = run_dir.uri_of("report", "index.html") if run_dir.fs.exists(report) else None
    return info


def _configured_chain(config: dict[str, Any]) -> list[str]:
    """The default chain's stage names for the run's config (empty if it no longer validates)."""
    from aipo_ray.config import ConfigError, build_config

    from .registry import default_stage_classes

    try:
        cfg = build_config(config)
    except ConfigError:
        return []
    return [cls.name for cls in default_stage_classes() if cls.enabled(cfg)]


def _iteration_numbers(run_dir: RunDir) -> list[int]:
    fs = run_dir.fs
    found = []
    for path in fs.ls(run_dir.root, detail=False):
        m = _ITER.search(path.rstrip("/"))
        if m and fs.isdir(path):
            found.append(int(m.group(1)))
    return sorted(found)


def _iteration_stages(run_dir: RunDir, iteration: int, chain: list[str]) -> dict[str, Any]:
    fs = run_dir.fs
    present = _stage_directories(fs, run_dir.iteration_path(iteration))
    if ROUNDS in present:  # sampling rounds (pipeline/rounds.py): each round's data stages
        rounds = present.pop(ROUNDS)
        for r, path in sorted(_stage_directories(fs, rounds).items()):
            present.update({f"{ROUNDS}/{r}/{name}": p
                            for name, p in _stage_directories(fs, path).items()})
    stages = {}
    for name in sorted(set(present) | set(chain), key=_in_run_order):
        rec = read_success(fs, present[name]) if name in present else None
        if rec:
            stages[name] = {"state": "done", "done": True, "rows_in": rec.get("rows_in"),
                            "rows_out": rec.get("rows_out"),
                            "rejected": rec.get("rejected_total", 0), "seconds": rec.get("seconds"),
                            "reused_from": rec.get("reused_from")}
        elif name in present:
            stages[name] = {"state": "started", "done": False,
                            "progress": _progress(run_dir, present[name])}
        else:
            stages[name] = {"state": "pending", "done": False}
    return stages


ROUNDS = "rounds"


def _stage_directories(fs, directory: str) -> dict[str, str]:
    return {p.rstrip("/").rsplit("/", 1)[-1]: p
            for p in fs.ls(directory, detail=False) if fs.isdir(p)}


def _in_run_order(name: str) -> tuple:
    """Sampling rounds first (round by round, stages in pipeline order), then the chain."""
    if name.startswith(f"{ROUNDS}/"):
        _, r, stage = name.split("/", 2)
        return (0, r, stage_order(stage))
    return (1, "", stage_order(name))


def _progress(run_dir: RunDir, directory: str) -> dict[str, Any] | None:
    """The running stage's last progress snapshot (sharded stages write one every few seconds)."""
    import json

    path = f"{directory.rstrip('/')}/{PROGRESS}"
    try:
        return json.loads(run_dir.fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None


def _run_eta(iterations: list[dict], chain: list[str], planned: int | None) -> float | None:
    """Seconds left, estimated from the stages already done: each unfinished stage of the planned
    iterations is expected to take the mean time that stage took so far (the running one, its
    own ETA when it reports one). None until at least one stage of each remaining kind is done."""
    took: dict[str, list[float]] = {}
    for it in iterations:
        for name, st in it["stages"].items():
            if st["done"] and st.get("seconds") is not None and not st.get("reused_from"):
                took.setdefault(name, []).append(float(st["seconds"]))
    if not planned or not chain:
        return None
    seen = {it["iteration"]: it["stages"] for it in iterations}
    left = 0.0
    for number in range(1, int(planned) + 1):
        stages = seen.get(number, {})
        for name in chain:
            st = stages.get(name, {"state": "pending", "done": False})
            if st["done"]:
                continue
            progress = st.get("progress") or {}
            if progress.get("eta_s") is not None:
                left += float(progress["eta_s"])
            elif name in took:
                left += sum(took[name]) / len(took[name])
            else:
                return None
    return round(left, 1)


def _checkpoints(run_dir: RunDir) -> list[dict[str, Any]]:
    fs = run_dir.fs
    root = run_dir.path(MODELS)
    if not fs.exists(root):
        return []
    out = []
    for path in sorted(fs.ls(root, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not _ITER.search(name):
            continue
        out.append({
            "name": name,
            "committed": fs.exists(f"{path}/_COMMITTED"),
            "pointer": fs.exists(f"{path}/pointer.json"),
        })
    return out


def format_status(info: dict[str, Any]) -> str:
    lines = [f"run {info.get('name') or ''} at {info['run_dir']}"]
    if "elapsed_s" in info:
        lines.append(f"  started {info['started_at']}, elapsed {info['elapsed_s']:.0f}s")
    lines.append(f"  latest model: {info.get('latest_model') or 'none committed yet'}")
    for it in info["iterations"]:
        lines.append(f"  iteration {it['iteration']}:")
        for name, st in it["stages"].items():
            if st["done"]:
                lines.append(
                    f"    {name:<14} done     {st['rows_in']}→{st['rows_out']} rows, "
                    f"{st['rejected']} rejected, {st['seconds']}s"
                )
            else:
                progress = st.get("progress")
                progress = f"  {describe_progress(progress)}" if progress else ""
                lines.append(f"    {name:<14} {st['state']}{progress}")
    if info.get("eta_s") is not None:
        lines.append(f"  ETA of the run: {info['eta_s']:.0f}s (from the stages done so far)")
    if info.get("report"):
        lines.append(f"  report: {info['report']}")
    for ck in info["checkpoints"]:
        state = "committed" if ck["committed"] else ("base pointer" if ck["pointer"] else "NOT committed")
        lines.append(f"  models/{ck['name']}: {state}")
    return "\n".join(lines)
