"""PairRM and the reference log-probs on a GPU equal their CPU results.

Tolerances: in fp32 the GPU and the CPU differ only in summation order (torch leaves TF32 off
for matmuls by default), so PairRM's logits agree within 1e-4 and summed log-probs within 1e-3
relative. In the GPU defaults (float16 PairRM as llm-blender runs it, bfloat16 reference) the
rounding is that of 11 and 8 mantissa bits: PairRM's scores within 0.05 and the same best and
worst candidates; summed log-probs within 2% + 0.5 nats.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from aipo_ray.config import ModelConfig, RunConfig
from aipo_ray.config.training import ReferenceConfig
from aipo_ray.ranking import PairRM
from aipo_ray.training.reference import compute_ref_logps
from tests.ranking.test_pairrm_on_cpu import CANDIDATES, PROMPTS
from tests.training.test_trainer_on_cpu import make_pairs

from .conftest import GPU, NEEDS_RAY

pytestmark = GPU


@pytest.fixture(scope="module")
def cpu_scores(tiny_pairrm):
    return PairRM.from_pretrained(tiny_pairrm["hf"], batch_size=4).scores(PROMPTS, CANDIDATES)


def test_pairrm_on_gpu_fp32_equals_cpu(tiny_pairrm, cpu_scores):
    gpu = PairRM.from_pretrained(tiny_pairrm["hf"], device="cuda", batch_size=4)
    torch.testing.assert_close(gpu.scores(PROMPTS, CANDIDATES).cpu(), cpu_scores, atol=1e-4,
                               rtol=0)


def test_pairrm_on_gpu_fp16_keeps_best_and_worst(tiny_pairrm, cpu_scores):
    gpu = PairRM.from_pretrained(tiny_pairrm["hf"], device="cuda", dtype=torch.float16,
                                 batch_size=4)
    scores = gpu.scores(PROMPTS, CANDIDATES).float().cpu()
    torch.testing.assert_close(scores, cpu_scores, atol=0.05, rtol=0)
    # Rows with a tie on CPU (identical candidates) have no single best: compare the others.
    for row, ref in zip(scores, cpu_scores, strict=True):
        if len(set(ref.tolist())) == len(ref):
            assert (row.argmax(), row.argmin()) == (ref.argmax(), ref.argmin())


def _ref_logps(model: str, gpus: float, dtype: str) -> pa.Table:
    config = RunConfig(model=ModelConfig(path=model, dtype=dtype),
                       reference=ReferenceConfig(gpus_per_replica=gpus, batch_size=2))
    return compute_ref_logps(config, make_pairs(), model)


@NEEDS_RAY
@pytest.mark.parametrize(("dtype", "rtol", "atol"), [("float32", 1e-3, 1e-3),
                                                      ("auto", 0.02, 0.5)])
def test_reference_logps_on_gpu_equal_cpu(gpu_ray, smollm2_path, dtype, rtol, atol):
    cpu = _ref_logps(smollm2_path, 0, "float32")
    gpu = _ref_logps(smollm2_path, 1, dtype)  # auto: bfloat16 on a GPU
    assert gpu.column("prompt_id").equals(cpu.column("prompt_id"))
    for key in ("ref_chosen_logp", "ref_rejected_logp"):
        torch.testing.assert_close(torch.tensor(gpu.column(key).to_pylist()),
                                   torch.tensor(cpu.column(key).to_pylist()), rtol=rtol, atol=atol)
    for key in ("chosen_len", "rejected_len"):
        assert gpu.column(key).equals(cpu.column(key))
