"""The `hf` backend on a local Ray cluster, on a tiny random Llama and on SmolLM2-135M-Instruct."""

import functools

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aipo_ray.config import GenerationConfig
from aipo_ray.generation import OUTPUT_COLUMNS, Generator, check_candidates, generate
from aipo_ray.generation.hf import generate_hf

# Different lengths, so a batch of them is really left-padded.
PROMPTS = [
    "What is the capital of France?",
    "hi",
    "Write one sentence about the sea, then list three kinds of fish that live in it.",
    "Name a prime number.",
]


def run_hf(model_path, prompts=PROMPTS, **overrides):
    import ray

    cfg = GenerationConfig(**{"backend": "hf", "num_candidates": 2, "max_tokens": 16,
                              "batch_size": 4, **overrides})
    ds = ray.data.from_arrow(pa.table({"prompt_id": [f"p{i}" for i in range(len(prompts))],
                                       "prompt": prompts}))
    rows = generate(ds, model_path, cfg).take_all()
    return sorted(rows, key=lambda r: (r["prompt_id"], r["candidate_idx"]))


@functools.cache
def load(model_path):
    tok = AutoTokenizer.from_pretrained(model_path)
    return tok, AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


def plain_greedy(model_path, prompt, max_tokens):
    """Single process, one prompt, no padding: what the batched actors must reproduce."""
    tok, model = load(model_path)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    stopped = tok.eos_token_id in new
    new = new[:new.index(tok.eos_token_id)] if stopped else new
    return tok.decode(new, skip_special_tokens=True), len(new), "stop" if stopped else "length"


@pytest.fixture(scope="module")
def smollm2_greedy_batched(ray_cluster, smollm2_path):
    """SmolLM2 greedy, 4 prompts in one left-padded batch, 2 (identical) candidates each."""
    return run_hf(smollm2_path, temperature=0.0, batch_size=4)


def test_hf_backend_is_a_generator():
    assert isinstance(generate_hf, Generator)


def test_tiny_llama_gives_exactly_n_candidates_with_contract_columns(ray_cluster, tiny_llama_path):
    rows = run_hf(tiny_llama_path, num_candidates=3, max_tokens=8, temperature=1.0, batch_size=2,
                  num_replicas=2)
    assert len(rows) == 3 * len(PROMPTS)
    assert all(tuple(r) == OUTPUT_COLUMNS for r in rows)
    check_candidates(pa.Table.from_pylist(rows), [f"p{i}" for i in range(len(PROMPTS))], 3)
    by_prompt = {r["prompt_id"]: r["prompt"] for r in rows}
    assert by_prompt == {f"p{i}": p for i, p in enumerate(PROMPTS)}
    for r in rows:
        assert 0 <= r["num_tokens"] <= 8
        assert r["finish_reason"] == ("length" if r["num_tokens"] == 8 else "stop")
    # Sampled candidates of one prompt differ (a random model's 8 tokens never coincide).
    assert len({r["response"] for r in rows if r["prompt_id"] == "p0"}) == 3


def test_smollm2_greedy_equals_plain_single_prompt_generate(smollm2_greedy_batched, smollm2_path):
    rows = smollm2_greedy_batched
    for i, prompt in enumerate(PROMPTS):
        expected = plain_greedy(smollm2_path, prompt, max_tokens=16)
        got = [(r["response"], r["num_tokens"], r["finish_reason"])
               for r in rows if r["prompt_id"] == f"p{i}"]
        assert got == [expected, expected], prompt
    # The real model answers the short question within 16 tokens and stops at its EOS.
    assert rows[0]["finish_reason"] == "stop" and "Paris" in rows[0]["response"]


def test_greedy_outputs_do_not_depend_on_batch_size(smollm2_greedy_batched, smollm2_path):
    one_by_one = run_hf(smollm2_path, temperature=0.0, batch_size=1)
    assert one_by_one == smollm2_greedy_batched


def test_sampling_is_seeded_per_candidate_not_per_batch(ray_cluster, tiny_llama_path):
    kwargs = dict(num_candidates=2, max_tokens=6, temperature=1.0, top_p=0.9, seed=11)
    batched = run_hf(tiny_llama_path, batch_size=4, **kwargs)
    single = run_hf(tiny_llama_path, batch_size=1, **kwargs)
    assert [r["response"] for r in batched] == [r["response"] for r in single]
    reseeded = run_hf(tiny_llama_path, batch_size=4, **{**kwargs, "seed": 12})
    assert [r["response"] for r in reseeded] != [r["response"] for r in batched]


def test_tiny_max_tokens_ends_every_response_with_length(ray_cluster, smollm2_path):
    rows = run_hf(smollm2_path, prompts=PROMPTS[2:], num_candidates=2, max_tokens=2,
                  temperature=0.7)
    assert len(rows) == 4
    assert {(r["finish_reason"], r["num_tokens"]) for r in rows} == {("length", 2)}
    assert all(r["response"].strip() for r in rows)
