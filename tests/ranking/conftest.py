"""Tiny PairRM checkpoints (both layouts, one set of weights) and llm-blender patched for
transformers 5, shared by the ranking tests."""

from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def tiny_pairrm(tmp_path_factory) -> dict[str, str]:
    """Paths of the tiny backbone and of the llm-blender and PairRM-hf layouts."""
    from aipo_ray.ranking.tiny import build_tiny_pairrm

    return build_tiny_pairrm(tmp_path_factory.mktemp("tiny-pairrm"))


@pytest.fixture(scope="session")
def tiny_pairrm_short(tmp_path_factory) -> dict[str, str]:
    """Like tiny_pairrm, but with limits 48 / 16 tokens instead of 1224 / 412: truncation of
    sources and candidates without 2000-token sequences, which take seconds each on a CPU."""
    from aipo_ray.ranking.tiny import build_tiny_pairrm

    return build_tiny_pairrm(
        tmp_path_factory.mktemp("tiny-pairrm-short"), seed=1, source_maxlength=48, candidate_maxlength=16
    )


@pytest.fixture(scope="session")
def pairrm(tiny_pairrm):
    from aipo_ray.ranking import PairRM

    return PairRM.from_pretrained(tiny_pairrm["llm-blender"], batch_size=4)


@contextmanager
def patched_llm_blender(cache_dir: str):
    """llm-blender 0.0.2 importable on transformers 5: it imports `TRANSFORMERS_CACHE`, which is
    gone, and its collator calls `batch_encode_plus`, which is gone; both come back inside the
    block. Nothing else of llm-blender is changed. Also used by benchmarks/ranking.py."""
    import importlib

    import transformers.utils.hub as hub
    from transformers import PreTrainedTokenizerBase

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub, "TRANSFORMERS_CACHE", cache_dir, raising=False)
        mp.setattr(
            PreTrainedTokenizerBase, "batch_encode_plus",
            lambda self, texts, **kwargs: self(texts, **kwargs), raising=False,
        )
        yield importlib.import_module("llm_blender")


@pytest.fixture(scope="module")
def llm_blender(tmp_path_factory):
    """llm-blender, patched for transformers 5 for the duration of the module."""
    import importlib.util

    if importlib.util.find_spec("llm_blender") is None:  # importing it unpatched would fail
        pytest.skip("llm-blender (dev extra) is not installed")
    with patched_llm_blender(str(tmp_path_factory.mktemp("blender-cache"))) as module:
        yield module
