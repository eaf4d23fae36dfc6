"""GPU-only figures: FSDP2 trainer tokens/s and MFU at size, and vLLM on a GPU.

Without CUDA each writes its results file with `skipped` and the reason, so the table shows the
gap instead of hiding it. With one GPU:

- `training_gpu`: a random-initialised Llama-style 1.1B (TinyLlama shape, SmolLM2's tokenizer)
  at sequence 2048 (1024 prompt + 1024 response tokens), bf16 compute, one rank, through the
  trainer's own step function, with and without activation checkpointing.
- `generation_gpu`: `benchmarks.generation` with one GPU per vLLM replica and bf16.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from benchmarks.common import apply_env, emit, run_worker, write_result, write_skip

MODULE = "benchmarks.gpu"
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096)
SEQ_HALF, PAIRS, MICRO, STEPS, WARMUP = 1024, 16, 2, 4, 1


def cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device in this run (CPU-only machine)"
    return None


def build_model(target: str) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aipo_ray.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **LLAMA_1B)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def long_pairs():
    """Pairs whose prompt and responses each fill SEQ_HALF tokens after truncation."""
    import pyarrow as pa

    from benchmarks.pairs import make_pairs

    cols = make_pairs(PAIRS)
    for key in ("prompt", "chosen", "rejected"):
        cols[key] = [(text + " ") * 400 for text in cols[key]]
    return pa.table(cols)


def run_training(checkpointing: bool) -> dict:
    import pyarrow as pa

    from aipo_ray.config import LossConfig, ModelConfig, RunConfig, TrainingConfig
    from aipo_ray.training.loop import _train_step
    from benchmarks.train_vs_trl import build_worker, init_single_rank_group

    init_single_rank_group("nccl")
    with tempfile.TemporaryDirectory(prefix="bench-1b-") as tmp:
        path = build_model(tmp)
        config = RunConfig(
            model=ModelConfig(path=path), loss=LossConfig(name="dpo"),
            training=TrainingConfig(
                use_gpu=True, global_batch_size=MICRO * 2, micro_batch_size=MICRO,
                max_prompt_length=SEQ_HALF, max_response_length=SEQ_HALF, num_epochs=STEPS,
                gradient_checkpointing=checkpointing, lr_scheduler="constant", warmup_ratio=0.0),
        )
        table = long_pairs()
        zeros = pa.array([0.0] * table.num_rows)
        table = table.append_column("ref_chosen_logp", zeros).append_column("ref_rejected_logp", zeros)
        w = build_worker(config, table, model_uri=path, device="cuda")
        import torch

        records = []
        for step in range(WARMUP + STEPS):
            metrics = _train_step(w, step)
            if step >= WARMUP:
                records.append(metrics)
        return {"tokens_per_s": sum(r["tokens"] for r in records) / sum(r["seconds"] for r in records),
                "mfu": sum(r.get("mfu", 0.0) for r in records) / len(records),
                "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                "num_params": w.num_params, "device": torch.cuda.get_device_name(0)}


def training_gpu() -> None:
    reason = cuda_reason()
    sizes = {"model": "random Llama 1.1B (TinyLlama shape)", "seq": 2 * SEQ_HALF,
             "micro_batch_pairs": MICRO, "steps": STEPS, "dtype": "bf16 compute, fp32 params"}
    if reason:
        write_skip("training_gpu", reason, sizes)
        return
    figures = {}
    for ac in (False, True):
        key = "with_ac" if ac else "without_ac"
        try:
            figures[key] = run_worker(MODULE, "--train", str(int(ac)), timeout=900)
        except Exception as e:
            figures[key] = {"error": str(e)[-1500:]}
    write_result("training_gpu", sizes, figures)


def generation_gpu() -> None:
    reason = cuda_reason()
    if reason:
        write_skip("generation_gpu", reason, {"model": "builtin:smollm2-135m-instruct"})
        return
    import os

    os.environ["AIPO_BENCH_GPU"] = "1"
    from benchmarks import generation

    generation.main(result_name="generation_gpu")


def main() -> None:
    apply_env()
    start = time.perf_counter()
    training_gpu()
    generation_gpu()
    print(f"[bench] gpu: {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--train":
        apply_env()
        emit(run_training(bool(int(sys.argv[2]))))
    else:
        main()
        print(json.dumps({"done": True}))
