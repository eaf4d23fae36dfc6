"""Where one iteration's wall time goes: a real tiny run (pipelines/configs/tiny_cpu.yaml, one
iteration, CPU), from each stage's `_SUCCESS` seconds, plus Ray start-up, Ray Train's share of
the train stage outside optimizer steps, and storage commits.

The "baseline" here is the run itself: every share is a fraction of the same run's wall time.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, apply_env, emit, run_worker, write_result

MODULE = "benchmarks.iteration_split"
CONFIG = ROOT / "pipelines" / "configs" / "tiny_cpu.yaml"


def run_one_iteration(run_dir: str) -> dict:
    from aipo_ray.config import load_config
    from aipo_ray.pipeline import driver
    from aipo_ray.runtime import init_ray

    config = load_config(CONFIG, [f"run_dir={run_dir}", "iterations=1"])
    start = time.perf_counter()
    init_ray(config.ray)
    ray_start = time.perf_counter() - start
    summary = driver.run(config)
    wall = time.perf_counter() - start
    stages = {name: rec["seconds"] for name, rec in summary.iterations[0]["stages"].items()}
    metrics = Path(run_dir, "iter_001", "train", "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in metrics if line.strip()]
    return {"wall_seconds": wall, "ray_start_seconds": ray_start, "stage_seconds": stages,
            "optimizer_step_seconds": sum(s["seconds"] for s in steps), "steps": len(steps),
            "backend": config.generation.resolved_backend(), "ranking": config.ranking.backend,
            "pairs": summary.iterations[0]["stages"].get("pairs", {}).get("rows_out")}


def read_run(run_dir: str) -> dict:
    """The same figures from a finished run directory (its run.json start to the last
    `_SUCCESS`), for a run this benchmark did not start: Ray start-up is then unknown (0)."""
    import datetime as dt

    root = Path(run_dir)
    started = dt.datetime.fromisoformat(json.loads((root / "run.json").read_text())["started_at"])
    records = {f.parent.name: json.loads(f.read_text())
               for f in (root / "iter_001").glob("*/_SUCCESS")}
    records = dict(sorted(records.items(), key=lambda kv: kv[1]["finished_at"]))  # stage order
    finished = max(dt.datetime.fromisoformat(r["finished_at"]) for r in records.values())
    steps = [json.loads(line) for line in
             (root / "iter_001" / "train" / "metrics.jsonl").read_text().splitlines() if line]
    config = json.loads((root / "run.json").read_text())["config"]
    return {"wall_seconds": (finished - started).total_seconds(), "ray_start_seconds": 0.0,
            "stage_seconds": {k: r["seconds"] for k, r in records.items()},
            "optimizer_step_seconds": sum(s["seconds"] for s in steps), "steps": len(steps),
            "backend": config["generation"]["backend"], "ranking": config["ranking"]["backend"],
            "pairs": records.get("pairs", {}).get("rows_out"), "source_run": run_dir}


def summarise(r: dict) -> dict:
    wall, stages = r["wall_seconds"], r["stage_seconds"]
    accounted = r["ray_start_seconds"] + sum(stages.values())
    train_outside_steps = stages.get("train", 0.0) - r["optimizer_step_seconds"]
    return {
        "wall_seconds": wall,
        "share_ray_start": r["ray_start_seconds"] / wall,
        **{f"share_{name}": s / wall for name, s in stages.items()},
        "share_driver_between_stages": (wall - accounted) / wall,
        "share_train_outside_optimizer_steps": train_outside_steps / wall,
        "share_storage_commit": stages.get("commit", 0.0) / wall,
        "ray_overhead_fraction": (r["ray_start_seconds"] + max(train_outside_steps, 0.0)) / wall,
        "raw": r,
    }


def main(from_run: str | None = None, note: str | None = None) -> dict:
    apply_env()
    if from_run:
        r = read_run(from_run)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-iter-") as tmp:
            r = run_worker(MODULE, str(Path(tmp) / "run"), timeout=1200)
    sizes = {"config": str(CONFIG.relative_to(ROOT)), "iterations": 1, "device": "cpu",
             "generation_backend": r["backend"], "ranking_backend": r["ranking"],
             "pairs": r["pairs"], "optimizer_steps": r["steps"],
             "ray_overhead_definition": "Ray start-up + train stage time outside optimizer steps "
                                        "(Ray Train worker group, model load, FSDP wrap, final "
                                        "gather/save/upload)"}
    write_result("iteration_split", sizes, summarise(r), source_run=r.get("source_run"), note=note,
                 previous=previous_measurement())
    return summarise(r)


def previous_measurement() -> dict | None:
    """The split this run replaces (its date, wall and stage seconds): the report sets the two
    side by side, so a change to the pipeline shows as the iteration split before and after."""
    path = ROOT / "benchmarks" / "results" / "iteration_split.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    raw = old.get("figures", {}).get("raw")
    if not raw:
        return None
    return {"date": old["date"], "wall_seconds": raw["wall_seconds"],
            "stage_seconds": raw["stage_seconds"], "note": old.get("note")}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--from-run":
        print(json.dumps(main(sys.argv[2], " ".join(sys.argv[3:]) or None), indent=2, default=float))
    elif len(sys.argv) > 1:
        apply_env()
        emit(run_one_iteration(sys.argv[1]))
    else:
        print(json.dumps(main(), indent=2, default=float))
