"""Host memory per rank while the trainer loads θ_t: full load then FSDP2 vs sharded load.

2 gloo ranks on the CPU, SmolLM2-135M-Instruct saved in bf16 (loaded as fp32: 0.54 GB). "full" is the old way (every
rank `from_pretrained`s the whole model, then `fully_shard` drops all but its shard); "sharded"
builds on the meta device and reads only the rank's rows (aipo_ray/training/sharded_load.py).
The figure is each rank's peak private (anonymous) resident memory above its value after imports,
sampled every millisecond: torch's own ~0.4 GB cancels, and the memory-mapped safetensors pages
(shared page cache, one copy per node whatever the rank count) are left out.
Next to it, the computed per-rank figures at paper scale (docs/training.md explains them).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

from benchmarks.common import apply_env, write_result

MODEL = "builtin:smollm2-135m-instruct"
WORLD = 2
GIB = 2**30
# Parameters of the models the docs size: Llama-3.2-1B, Llama-3.1-8B, Mistral-Nemo-12B (paper).
PAPER_MODELS = {"1B": 1.24e9, "8B": 8.03e9, "12B": 12.25e9}


def _anon_mib() -> float:
    """Private (anonymous) resident memory: what a rank really holds. Pages of the memory-mapped
    safetensors files count in RSS too, but they are the node's shared, reclaimable page cache."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _PeakSampler(threading.Thread):
    """The highest `_anon_mib` seen, sampled every millisecond until `stop`."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = 0.0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, _anon_mib())
            time.sleep(0.001)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, _anon_mib())


def _rank(rank: int, mode: str, model_dir: str, out: str, port: int) -> None:
    import torch
    import torch.distributed as dist

    from aipo_ray.config import TrainingConfig
    from aipo_ray.training.fsdp import shard_model
    from aipo_ray.training.logps import SequenceLogps
    from aipo_ray.training.sharded_load import empty_causal_lm, load_sharded_weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import transformers  # noqa: F401  (imports done before the baseline)

    baseline = _anon_mib()
    sampler = _PeakSampler()
    sampler.start()
    cpu = torch.device("cpu")
    if mode == "full":
        from transformers import AutoModelForCausalLM

        causal_lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        shard_model(SequenceLogps(causal_lm, 1024), causal_lm, TrainingConfig(), cpu, torch.float32)
    else:
        causal_lm = empty_causal_lm(model_dir)
        shard_model(SequenceLogps(causal_lm, 1024), causal_lm, TrainingConfig(), cpu, torch.float32)
        load_sharded_weights(causal_lm, model_dir, cpu)
    peak = sampler.stop()
    with open(os.path.join(out, f"{mode}-{rank}.json"), "w") as f:
        json.dump({"peak_above_baseline_mib": peak - baseline,
                   "after_load_mib": _anon_mib() - baseline}, f)
    dist.destroy_process_group()


def measure(mode: str, model_dir: str) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        port = 29500 + (os.getpid() + len(mode)) % 20000
        mp.start_processes(_rank, args=(mode, model_dir, out, port), nprocs=WORLD,
                           start_method="spawn")
        return [json.load(open(os.path.join(out, f"{mode}-{r}.json"))) for r in range(WORLD)]


def computed(params: float, gpus: int = 8) -> dict[str, float]:
    """GiB per rank: loading (old: the full fp32 model; new: its shard), then steady full
    fine-tuning state (fp32 weights + fp32 grads + 2 AdamW moments = 16 B/param, sharded)."""
    return {"load_full_gib": 4 * params / GIB, "load_sharded_gib": 4 * params / gpus / GIB,
            "train_state_gib": 16 * params / gpus / GIB}


def bf16_copy(model_dir: str, target: str) -> str:
    """The model saved in bf16, as 8B/12B checkpoints ship: loading it as fp32 master weights
    converts, so the full load holds a private fp32 copy (an fp32 file is mmapped instead)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return target


def main() -> None:
    apply_env()
    from aipo_ray.models import builtin_model_path

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bf16_copy(builtin_model_path(MODEL), tmp)
        runs = {mode: measure(mode, model_dir) for mode in ("full", "sharded")}
    figures = {f"{mode}_peak_mib_rank{r}": v["peak_above_baseline_mib"]
               for mode, ranks in runs.items() for r, v in enumerate(ranks)}
    figures["sharded_over_full_peak"] = (max(figures[f"sharded_peak_mib_rank{r}"] for r in range(WORLD))
                                         / max(figures[f"full_peak_mib_rank{r}"] for r in range(WORLD)))
    figures["computed_8_gpus"] = {name: computed(p) for name, p in PAPER_MODELS.items()}
    write_result("sharded_load_memory", {"model": MODEL, "checkpoint_dtype": "bfloat16",
                                         "ranks": WORLD}, figures, runs=runs)


if __name__ == "__main__":
    main()
    sys.exit(0)
