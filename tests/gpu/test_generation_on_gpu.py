"""The vllm backend (ray.data.llm, one GPU per replica) against plain `vllm.LLM` on the same
token ids: greedy decoding gives the same text and token counts; and a finished generate stage
leaves no vLLM memory on the device (the stages after it, training above all, need it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow as pa

from aipo_ray.config import GenerationConfig
from aipo_ray.generation import generate
from tests.generation.test_hf_generation import PROMPTS

from .conftest import GPU, NEEDS_RAY, NEEDS_VLLM, gpu_memory_used_mib

pytestmark = [*GPU, NEEDS_RAY, NEEDS_VLLM]

MAX_TOKENS = 24
# Plain vLLM in its own process (it must not hold the GPU while the test's engines start): the
# prompts go in as the same token ids our backend sends (aipo_ray's chat template), greedy.
PLAIN_VLLM = """
import json, sys
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from aipo_ray.generation.base import chat_texts

path, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
if __name__ == "__main__":
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(chat_texts(tok, prompts), add_special_tokens=False)["input_ids"]
    llm = LLM(model=path, dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.4)
    outs = llm.generate([TokensPrompt(prompt_token_ids=list(i)) for i in ids],
                        SamplingParams(temperature=0.0, max_tokens=max_tokens))
    print("RESULT " + json.dumps([[o.outputs[0].text, len(o.outputs[0].token_ids)] for o in outs]))
"""


def _plain_vllm(model: str) -> list[list]:
    out = subprocess.run([sys.executable, "-c", PLAIN_VLLM, model, json.dumps(PROMPTS),
                          str(MAX_TOKENS)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _ours(model: str) -> list[dict]:
    import ray

    cfg = GenerationConfig(backend="vllm", num_candidates=2, max_tokens=MAX_TOKENS,
                           temperature=0.0, batch_size=4, max_model_len=512, gpus_per_replica=1,
                           dtype="bfloat16", engine_kwargs={"gpu_memory_utilization": 0.4})
    ds = ray.data.from_arrow(pa.table({"prompt_id": [f"p{i}" for i in range(len(PROMPTS))],
                                       "prompt": PROMPTS}))
    return sorted(generate(ds, model, cfg).take_all(),
                  key=lambda r: (r["prompt_id"], r["candidate_idx"]))


def test_vllm_backend_on_gpu_gives_plain_vllm_greedy_tokens(gpu_ray, smollm2_path):
    expected = _plain_vllm(smollm2_path)
    rows = _ours(smollm2_path)
    assert len(rows) == 2 * len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        text, count = expected[i]
        got = [(r["response"], r["num_tokens"]) for r in rows if r["prompt_id"] == f"p{i}"]
        # Both candidates are greedy: each equals plain vLLM's continuation. num_tokens counts up
        # to EOS, which plain vLLM reports as one of its tokens when it stopped on it.
        assert all(g[0] == text for g in got), (prompt, got, text)
        assert all(g[1] in (count, count - 1) for g in got), (prompt, got, count)


def test_generate_stage_on_gpu_leaves_no_vllm_memory_behind(gpu_ray, tiny_llama_path, tmp_path):
    from aipo_ray.pipeline import run_stage
    from aipo_ray.pipeline.stages.generate import GenerateStage
    from tests.generation.test_generate_stage import make_run

    baseline = gpu_memory_used_mib()
    ctx = make_run(tmp_path, tiny_llama_path, backend="vllm", gpus_per_replica=1,
                   max_model_len=512, engine_kwargs={"gpu_memory_utilization": 0.5})
    record = run_stage(GenerateStage(), ctx)
    assert record["rows_out"] == 6
    returned = time.monotonic()
    # The engine reserved half the device; once the stage returns it must give it back before the
    # next stage starts (Ray kills the pool's actors asynchronously: allow a few seconds).
    used = gpu_memory_used_mib()
    while used > baseline + 1024 and time.monotonic() - returned < 15:
        time.sleep(0.5)
        used = gpu_memory_used_mib()
    assert used <= baseline + 1024, f"{used} MiB in use after the stage, {baseline} before"
