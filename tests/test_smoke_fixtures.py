"""The shared fixtures really give a working model and a working Ray."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_llama_loads_and_pads_with_eos(tiny_llama_path):
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    # SmolLM2's pad token is its EOS token: masking must use the attention mask, not ids.
    assert tok.pad_token_id == tok.eos_token_id
    out = model(**tok(["hello world"], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)
    assert torch.isfinite(out.logits).all()


def test_local_ray_cluster_runs_tasks(ray_cluster):
    ray = ray_cluster

    @ray.remote
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
