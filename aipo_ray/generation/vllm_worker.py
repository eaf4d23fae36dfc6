"""A vLLM worker extension: loading another model's weights into a running engine.

vLLM (0.32) reloads weights in place layer by layer (`reload_weights`): each layer whose weights
the checkpoint holds is rebuilt, processed (`process_weights_after_loading`) and copied back into
its original tensors. A layer that *shares* its weight with another and is absent from the
checkpoint is skipped: the tied output head of a model with `tie_word_embeddings` (SmolLM2,
Llama 3.2, Gemma, Qwen2.5 small sizes). Its tensor is the embedding's and holds the new values,
but on CPU its GEMM was prepacked from the old ones at start-up (oneDNN / sgl kernels), so it
kept computing logits with the first model's head: every answer after a switch was wrong
(tests/generation/test_shared_engine.py shows it on a tied tiny Llama).

`reload_weights_and_ties` reloads, then processes again every layer whose weight tensor another
layer shares, so their packed copies are rebuilt from the new values. vLLM loads this class into
its worker processes by name (`worker_extension_cls`); the engines of generation/engines.py set
it.
"""

from __future__ import annotations

EXTENSION = "aipo_ray.generation.vllm_worker.WeightReloadExtension"


class WeightReloadExtension:
    """Mixed into vLLM's worker class; `self` is the worker (model_runner, reload_weights)."""

    def reload_weights_and_ties(self, weights_path: str) -> list[str]:
        """Load `weights_path`'s weights in place; returns the shared-weight layers rebuilt."""
        self.reload_weights(weights_path=weights_path)
        return reprocess_shared_weights(self.model_runner.get_model())


def reprocess_shared_weights(model) -> list[str]:
    """Run `process_weights_after_loading` again on every layer whose weight tensor is shared
    with another layer (tied embeddings); returns their names."""
    owners: dict[int, list[tuple[str, object]]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and getattr(module, "quant_method", None) is not None:
            owners.setdefault(id(weight), []).append((name, module))
    rebuilt = []
    for modules in owners.values():
        if len(modules) < 2:
            continue
        for name, module in modules:
            module.quant_method.process_weights_after_loading(module)
            rebuilt.append(name)
    return sorted(rebuilt)
