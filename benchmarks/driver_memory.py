"""Driver memory of a sharded stage: peak RSS of the driver at 1× and 10× the rows.

The rankings stage (a Python scoring function as ranker, so it runs fast on CPU) ranks a
generations table of `PROMPTS` × `CANDIDATES` long responses, and 10× that, each in a fresh
driver process (its own Ray and its own peak RSS). Sharded, the driver holds one shard's input
at a time and never the output, so its peak should not grow with the rows (ratio near 1). The
baseline column is the pre-shard way, measured the same way: the driver reads the whole input
and gathers every output block (`ray.get`) before writing.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import apply_env, emit, peak_rss_mib, ratio, run_worker, write_result

PROMPTS, CANDIDATES, RESPONSE_CHARS, SHARD_SIZE, SCALE = 1000, 4, 1000, 500, 10


def by_length(prompt: str, candidates: list[str]) -> list[float]:
    """The ranker: shorter is better (cheap and deterministic)."""
    return [-float(len(c)) for c in candidates]


def write_input(root: Path, prompts: int) -> str:
    """A run directory whose iteration 1 holds a finished generations table (written here, in
    the parent, so the measured driver never held it)."""
    import pyarrow as pa

    from aipo_ray.storage import RunDir, make_prompt_id, write_success
    from aipo_ray.storage.schemas import GENERATIONS

    rd = RunDir(str(root))
    for part, start in enumerate(range(0, prompts, SHARD_SIZE)):
        ids = [make_prompt_id(f"prompt {i}") for i in range(start, min(start + SHARD_SIZE, prompts))]
        rows = [(p, j) for p in ids for j in range(CANDIDATES)]
        rd.write_stage_table(1, "generations", pa.table({
            "prompt_id": [p for p, _ in rows], "prompt": [f"prompt {p}" for p, _ in rows],
            "candidate_idx": pa.array([j for _, j in rows], pa.int32()),
            "response": [(f"{p}-{j} " * RESPONSE_CHARS)[:RESPONSE_CHARS - j] for p, j in rows],
            "num_tokens": pa.array([RESPONSE_CHARS // 4] * len(rows), pa.int32()),
            "finish_reason": ["stop"] * len(rows)}, schema=GENERATIONS), part=part)
    write_success(rd.fs, rd.stage_path(1, "generations"), {"fingerprint": "bench"})
    return rd.uri


def worker(run_dir: str, mode: str) -> None:
    """One driver: rank the generations of `run_dir` sharded, or the pre-shard way."""
    from aipo_ray.config import RunConfig
    from aipo_ray.pipeline import StageContext, run_stage
    from aipo_ray.pipeline.stages.rank import RankStage
    from aipo_ray.runtime import init_ray
    from aipo_ray.storage import RunDir

    config = RunConfig.model_validate({
        "name": "bench", "run_dir": run_dir, "model": {"path": "unused"},
        "storage": {"shard_size": SHARD_SIZE},
        "ranking": {"batch_size": 256}, "ray": {"num_cpus": 2, "object_store_memory": 2**29}})
    init_ray(config.ray)
    ctx = StageContext(config=config, run_dir=RunDir(run_dir), iteration=1)
    base = peak_rss_mib()
    started = time.perf_counter()
    if mode == "sharded":
        rows = run_stage(RankStage(ranker=by_length), ctx)["rows_out"]
    else:
        rows = gather_then_write(ctx)
    emit({"peak_rss_mib": peak_rss_mib(), "rss_after_ray_start_mib": base, "rows_out": rows,
          "seconds": time.perf_counter() - started})


def gather_then_write(ctx) -> int:
    """The pre-shard rankings stage: whole input on the driver, every output block gathered."""
    import ray

    from aipo_ray.actor_pool import collect
    from aipo_ray.pipeline.stages.rank import group_candidates
    from aipo_ray.ranking import rank_pool
    from aipo_ray.storage.schemas import RANKINGS

    grouped = group_candidates(ctx.read("generations"))
    table = collect(rank_pool(ray.data.from_arrow(grouped), ctx.config.ranking,
                              score_fn=by_length), RANKINGS)
    ctx.write("rankings", table.sort_by("prompt_id"))
    return table.num_rows


def main() -> None:
    apply_env()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, SCALE):
            run_dir = write_input(Path(tmp) / f"x{scale}", PROMPTS * scale)
            for mode in ("sharded", "gathered"):
                result = run_worker("benchmarks.driver_memory", "worker", run_dir, mode)
                assert result["rows_out"] == PROMPTS * scale, result
                figures[f"{mode}_x{scale}"] = result
                print(f"[bench] driver_memory {mode} ×{scale}: {result['peak_rss_mib']:.0f} MiB "
                      f"peak, {result['seconds']:.0f}s", flush=True)
    for mode in ("sharded", "gathered"):
        figures[f"{mode}_peak_ratio"] = ratio(figures[f"{mode}_x{SCALE}"]["peak_rss_mib"],
                                              figures[f"{mode}_x1"]["peak_rss_mib"])
    write_result("driver_memory", {
        "stage": "rankings (Python ranker)", "prompts_x1": PROMPTS, "scale": SCALE,
        "candidates": CANDIDATES, "response_chars": RESPONSE_CHARS, "shard_size": SHARD_SIZE,
        "input_mib_x1": round(PROMPTS * CANDIDATES * RESPONSE_CHARS / 2**20, 1)}, figures)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        apply_env()
        worker(*sys.argv[2:4])
    else:
        main()
