"""Per-step training metrics: exact over the whole global batch, one JSON line per step."""

from __future__ import annotations

import json
import posixpath

import torch
import torch.distributed as dist

from aipo_ray.config import StorageConfig
from aipo_ray.losses import PairLogps, PreferenceLoss
from aipo_ray.storage import filesystem, with_retries

# Columns of the per-pair record each worker keeps during a step (gathered at its end).
PAIR_COLUMNS = ("weight", "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected",
                "chosen_len", "rejected_len")
# Dense bf16 peak FLOP/s per device, for MFU; unknown devices report no MFU.
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
               "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_FLOPS.items() if k in name), None)


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """This process's peak host RSS and, on GPU, peak allocated device memory (MiB)."""
    import resource

    out = {"memory/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["memory/peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def gather_pair_records(local: torch.Tensor) -> torch.Tensor:
    """[W × n, K] from every worker's [n, K] (every worker holds the same n), rows with weight > 0."""
    world = dist.get_world_size()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    rows = torch.cat(parts)
    return rows[rows[:, 0] > 0]


def step_loss_metrics(records: torch.Tensor, loss_fn: PreferenceLoss) -> dict[str, float]:
    """`loss` and every metric of `loss_fn`, over the real pairs of the step (all workers)."""
    col = {name: records[:, i] for i, name in enumerate(PAIR_COLUMNS)}
    has_ref = loss_fn.requires_reference
    batch = PairLogps(
        policy_chosen=col["policy_chosen"], policy_rejected=col["policy_rejected"],
        ref_chosen=col["ref_chosen"] if has_ref else None,
        ref_rejected=col["ref_rejected"] if has_ref else None,
        chosen_len=col["chosen_len"], rejected_len=col["rejected_len"],
    )
    with torch.no_grad():
        out = loss_fn(batch)
    metrics = {"loss": float(out.losses.mean())}
    metrics.update({k: float(v) for k, v in out.metrics.items()})
    return metrics


def sum_across_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


class MetricsLog:
    """`metrics.jsonl` at a local path or s3:// URI, rewritten whole after each step.

    Object stores cannot append; the file is small (one line per step), so rank 0 rewrites it.
    After a resume, lines past the restored step are dropped so every step appears once.
    """

    def __init__(self, uri: str, storage: StorageConfig | None, resume_after_step: int = 0):
        self.uri, self.storage = uri, storage
        self.fs, self.path = filesystem(uri, storage)
        self.lines: list[str] = []
        if resume_after_step and self.fs.exists(self.path):
            old = with_retries(lambda: self.fs.cat_file(self.path), f"read {uri}", storage)
            self.lines = [ln for ln in old.decode().splitlines()
                          if ln.strip() and json.loads(ln)["step"] <= resume_after_step]

    def append(self, record: dict) -> None:
        self.lines.append(json.dumps(record, sort_keys=True))
        body = ("\n".join(self.lines) + "\n").encode()
        parent = posixpath.dirname(self.path)
        with_retries(lambda: (self.fs.makedirs(parent, exist_ok=True),
                              self.fs.pipe_file(self.path, body)),
                     f"write {self.uri}", self.storage)
