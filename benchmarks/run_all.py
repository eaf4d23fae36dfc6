"""`make bench`: every benchmark once, then docs/performance.md from the results files.

A benchmark that fails leaves a results file with its error, and the others still run; the
exit status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from benchmarks.common import apply_env, write_result

# scaling reads the others' results, so it runs after them; report runs last.
BENCHMARKS = ["ranking", "reward_model", "ranker_costs", "pairrm_real_size", "train_vs_trl", "generation", "iteration_split", "shared_engine", "engine_reload", "engine_start", "gpu",
              "scaling",
              "driver_memory", "trainer_e2e", "training_variants",
              "sharded_load_memory"]
RESULT_NAMES = {"generation": "generation_cpu", "scaling": "scaling_paper", "gpu": "training_gpu"}


def main(names: list[str] | None = None) -> int:
    apply_env()
    failed = []
    started = time.perf_counter()
    for name in names or BENCHMARKS:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        except Exception as e:
            traceback.print_exc()
            failed.append(name)
            write_result(RESULT_NAMES.get(name, name), {}, {},
                         error=f"{type(e).__name__}: {str(e)[-2000:]}")
        print(f"[bench] {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    from benchmarks import report

    report.main()
    print(f"[bench] all: {time.perf_counter() - started:.0f}s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
