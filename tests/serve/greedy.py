"""What transformers itself answers greedily: the reference a served answer must equal."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def local_greedy(model_dir: str, messages: list[dict] | None, max_new_tokens: int,
                 prompt: str | None = None) -> str:
    """The greedy answer to `messages` (chat template applied) or the continuation of `prompt`."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if messages is not None:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
    else:
        enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)
