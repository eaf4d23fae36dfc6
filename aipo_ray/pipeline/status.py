"""What a run directory holds right now: iterations, stages, rows, checkpoints, elapsed time."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from aipo_ray.storage import MODELS, RUN_JSON, RunDir, read_success

_ITER = re.compile(r"iter_(\d{3,})$")


def run_status(run_dir: RunDir) -> dict[str, Any]:
    """A JSON-able summary; works on a run that is still in progress."""
    fs = run_dir.fs
    info: dict[str, Any] = {"run_dir": run_dir.uri, "latest_model": run_dir.latest_model()}
    if run_dir.exists(RUN_JSON):
        meta = run_dir.read_json(RUN_JSON)
        info["name"] = meta.get("config", {}).get("name")
        info["iterations_planned"] = meta.get("config", {}).get("iterations")
        info["started_at"] = meta.get("started_at")
        if meta.get("started_at"):
            started = datetime.fromisoformat(meta["started_at"])
            info["elapsed_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    iterations = []
    for path in sorted(fs.ls(run_dir.root, detail=False)) if fs.exists(run_dir.root) else []:
        m = _ITER.search(path.rstrip("/"))
        if not m:
            continue
        stages = {}
        for stage_path in sorted(fs.ls(path, detail=False)):
            if not fs.isdir(stage_path):
                continue
            rec = read_success(fs, stage_path)
            name = stage_path.rstrip("/").rsplit("/", 1)[-1]
            stages[name] = (
                {"done": True, "rows_in": rec.get("rows_in"), "rows_out": rec.get("rows_out"),
                 "rejected": rec.get("rejected_total", 0), "seconds": rec.get("seconds")}
                if rec else {"done": False}
            )
        iterations.append({"iteration": int(m.group(1)), "stages": stages})
    info["iterations"] = iterations
    info["checkpoints"] = _checkpoints(run_dir)
    return info


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
                    f"    {name:<14} done   {st['rows_in']}→{st['rows_out']} rows, "
                    f"{st['rejected']} rejected, {st['seconds']}s"
                )
            else:
                lines.append(f"    {name:<14} incomplete")
    for ck in info["checkpoints"]:
        state = "committed" if ck["committed"] else ("base pointer" if ck["pointer"] else "NOT committed")
        lines.append(f"  models/{ck['name']}: {state}")
    return "\n".join(lines)
