"""Chosen-rejected similarity backends: word n-gram overlap (default) or an embedding model.

The paper's Table 2 uses Sentence Transformers; `embedding_similarity` gets the same kind of
number (cosine of mean-pooled hidden states) from any local encoder directory through plain
transformers, so no extra package is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .stats import Similarity, ngram_similarity


def embedding_similarity(model_path: str, batch_size: int = 16, max_length: int = 512) -> Similarity:
    """Cosine similarity of mean-pooled (attention-masked) last hidden states, per pair."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=torch.float32).eval()

    @torch.no_grad()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def similarity(chosen: Sequence[str], rejected: Sequence[str]) -> np.ndarray:
        if not len(chosen):
            return np.array([])
        return (embed(chosen) * embed(rejected)).sum(-1).numpy().astype(np.float64)

    similarity.method = f"embedding_cosine:{model_path}"  # type: ignore[attr-defined]
    return similarity


def build_similarity(model: str | None, ngram_n: int = 2, storage=None) -> Similarity:
    """n-gram overlap unless an embedding model (dir, builtin or committed URI) is configured."""
    if not model:
        return ngram_similarity(ngram_n)
    from aipo_ray.models import resolve_model_path

    return embedding_similarity(resolve_model_path(model, storage))
