"""GPU tests (marker `gpu`, `make test-gpu`): skipped with a reason where torch sees no CUDA.

They run in one command on a lent device (about 5 minutes on one H100/H200 with
benchmarks/gpu.py). Each module marks itself with `pytestmark = GPU`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pytest


def cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False: CPU build or no device)"
    return None


GPU = [pytest.mark.gpu, pytest.mark.skipif(cuda_reason() is not None, reason=str(cuda_reason()))]


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# A GPU image without the project's Ray or vLLM (the lent device's: docs/cluster.md) still runs
# the tests that need neither; the others say what is missing instead of erroring.
NEEDS_RAY = pytest.mark.skipif(_missing("ray"), reason="needs `ray` (pip install -e .)")
NEEDS_VLLM = pytest.mark.skipif(_missing("vllm"),
                                reason="needs `vllm` on a CUDA build (pip install -e '.[gpu]')")


def gpu_memory_used_mib() -> int:
    """Memory in use on GPU 0 by every process (nvidia-smi, so this process holds no context)."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits", "-i", "0"], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0])
    import torch

    free, total = torch.cuda.mem_get_info(0)
    return (total - free) // 2**20


@pytest.fixture(scope="session")
def gpu_ray():
    """A local Ray with the machine's GPUs and CPUs (the default `ray_cluster` caps CPUs at 2)."""
    import ray

    from aipo_ray.config import RayConfig
    from aipo_ray.runtime import init_ray

    started = init_ray(RayConfig(num_cpus=min(os.cpu_count() or 2, 16),
                                 object_store_memory=4 * 1024**3))
    assert ray.cluster_resources().get("GPU", 0) >= 1, ray.cluster_resources()
    yield ray
    if started:
        ray.shutdown()
