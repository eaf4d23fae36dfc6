"""A few DPO steps on the real SmolLM2-135M-Instruct raise the chosen-over-rejected margin.

One Ray Train worker: on 2 CPU cores, two FSDP2 workers of a 135M model take ~3× longer per step
(the 2-worker equivalence is pinned on the tiny Llama in test_trainer_on_cpu.py). ~55 s.
"""

import json

import pyarrow as pa
import pytest

from aipo_ray.config import LossConfig, ModelConfig, RunConfig, TrainingConfig
from aipo_ray.config.generation import GenerationConfig
from aipo_ray.storage import make_prompt_id
from aipo_ray.training.reference import compute_ref_logps
from aipo_ray.training.trainer import train_policy

PAIRS = [
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("Name the largest planet.", "Jupiter.", "The Moon."),
    ("What colour is the sky on a clear day?", "Blue.", "Green."),
    ("Translate 'merci' to English.", "Thank you.", "Goodbye."),
]


def _margins(table: pa.Table) -> list[float]:
    c, r = table.column("ref_chosen_logp").to_pylist(), table.column("ref_rejected_logp").to_pylist()
    return [a - b for a, b in zip(c, r, strict=True)]


@pytest.mark.slow  # ~1.5 min on SmolLM2
def test_dpo_steps_on_smollm2_raise_the_chosen_over_rejected_margin(ray_cluster, smollm2_path,
                                                                     tmp_path):
    prompts, chosen, rejected = (list(x) for x in zip(*PAIRS, strict=True))
    pairs = pa.table({"prompt_id": [make_prompt_id(p) for p in prompts], "prompt": prompts,
                      "chosen": chosen, "rejected": rejected, "chosen_score": [1.0] * 4,
                      "rejected_score": [0.0] * 4})
    config = RunConfig(
        model=ModelConfig(path=smollm2_path), loss=LossConfig(name="dpo", beta=0.1),
        generation=GenerationConfig(max_tokens=16),
        training=TrainingConfig(
            num_workers=1, global_batch_size=4, micro_batch_size=2, num_epochs=2,
            learning_rate=1e-5, lr_scheduler="constant", warmup_ratio=0.0,
            max_prompt_length=128, max_response_length=16, logps_chunk_size=64,
        ),
    )
    before = compute_ref_logps(config, pairs, smollm2_path)
    out = tmp_path / "model"
    train_policy(config, pairs, before, smollm2_path, output_uri=str(out),
                 metrics_uri=str(tmp_path / "metrics.jsonl"), storage_path=str(tmp_path / "ray"))
    after = compute_ref_logps(config, pairs, str(out))  # the committed output, verified
    gains = [a - b for a, b in zip(_margins(after), _margins(before), strict=True)]
    assert sum(gains) / len(gains) > 0.5, gains  # nats; DPO moved every pair the right way
    assert all(g > 0 for g in gains), gains
    metrics = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[-1]["rewards/margins"] > metrics[0]["rewards/margins"]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
