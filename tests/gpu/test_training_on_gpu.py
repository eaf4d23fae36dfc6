"""bf16 FSDP2 training of SmolLM2-135M-Instruct on a GPU against the same run in fp32.

The reference log-probs come from one fp32 pass, so both runs see the same pairs and targets;
only the compute precision differs. Stated tolerance: each step's loss within 0.02 of fp32's
(bf16 keeps 8 mantissa bits: a per-token log-prob error of ~1e-2, summed over at most 16
response tokens and scaled by β = 0.1 in the DPO margin, moves the loss by well under 0.02),
and the policy's summed log-probs within 2% of fp32's.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from aipo_ray.config import LossConfig, ModelConfig, RunConfig, TrainingConfig
from aipo_ray.config.generation import GenerationConfig
from aipo_ray.storage import make_prompt_id
from aipo_ray.storage.checkpoint import verify_checkpoint
from aipo_ray.training.reference import compute_ref_logps
from aipo_ray.training.trainer import train_policy

from .conftest import GPU, NEEDS_RAY

pytestmark = [*GPU, NEEDS_RAY]

LOSS_ATOL = 0.02
LOGPS_RTOL = 0.02
PAIRS = [
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("Name the largest planet.", "Jupiter.", "The Moon."),
    ("What colour is the sky on a clear day?", "Blue.", "Green."),
    ("Translate 'merci' to English.", "Thank you.", "Goodbye."),
    ("Give a prime number.", "Seven.", "Nine."),
]


def _pairs() -> pa.Table:
    prompts, chosen, rejected = (list(x) for x in zip(*PAIRS, strict=True))
    n = len(prompts)
    return pa.table({"prompt_id": [make_prompt_id(p) for p in prompts], "prompt": prompts,
                     "chosen": chosen, "rejected": rejected, "chosen_score": [1.0] * n,
                     "rejected_score": [0.0] * n})


def _config(model: str, precision: str) -> RunConfig:
    return RunConfig(
        model=ModelConfig(path=model), loss=LossConfig(name="dpo", beta=0.1),
        generation=GenerationConfig(max_tokens=16),
        training=TrainingConfig(
            num_workers=1, use_gpu=True, gpus_per_worker=1, mixed_precision=precision,
            global_batch_size=4, micro_batch_size=2, learning_rate=1e-5,
            lr_scheduler="constant", warmup_ratio=0.0, max_prompt_length=128,
            max_response_length=16, logps_chunk_size=64),
    )


def _train(config: RunConfig, pairs, ref, model: str, out) -> list[dict]:
    train_policy(config, pairs, ref, model, output_uri=str(out / "model"),
                 metrics_uri=str(out / "metrics.jsonl"), storage_path=str(out / "ray"))
    verify_checkpoint(str(out / "model"))
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_bf16_fsdp2_loss_equals_fp32_within_tolerance(gpu_ray, smollm2_path, tmp_path):
    pairs = _pairs()
    ref = compute_ref_logps(_config(smollm2_path, "fp32"), pairs, smollm2_path)
    fp32 = _train(_config(smollm2_path, "fp32"), pairs, ref, smollm2_path, tmp_path / "fp32")
    bf16 = _train(_config(smollm2_path, "bf16"), pairs, ref, smollm2_path, tmp_path / "bf16")
    assert [m["step"] for m in bf16] == [m["step"] for m in fp32] == [1, 2]
    for a, b in zip(bf16, fp32, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_ATOL), (a, b)
        for key in ("logps/chosen", "logps/rejected"):
            assert a[key] == pytest.approx(b[key], rel=LOGPS_RTOL), (key, a, b)
    # fp32 on the GPU with reference = policy: the first DPO loss is ln 2.
    assert fp32[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
