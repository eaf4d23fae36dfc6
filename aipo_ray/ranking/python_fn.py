"""A user's Python function as the ranker: `(prompt, candidates) -> scores`, named 'module:function'."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import numpy as np

from .base import ScoringRanker
from .pairwise import num_candidates
from .registry import RankerContext, register_ranker

ScoreFn = Callable[[str, list[str]], "list[float] | np.ndarray"]


def load_function(spec: str) -> ScoreFn:
    """Import 'package.module:function' (the module must be importable where the actor runs)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"ranking.callable {spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"ranking.callable {spec!r}: cannot import {module_name!r}: {err}") from err
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise AttributeError(f"ranking.callable {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise TypeError(f"ranking.callable {spec!r} is not callable")
    return fn


class CallableRanker(ScoringRanker):
    """Calls the function once per prompt; scores must be N finite numbers, higher is better."""

    def __init__(self, fn: ScoreFn | str):
        self.name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
        self.fn = load_function(fn) if isinstance(fn, str) else fn

    def score(self, prompts: list[str], candidates: list[list[str]]) -> np.ndarray:
        n = num_candidates(prompts, candidates)
        out = np.zeros((len(prompts), n), dtype=np.float64)
        for row, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
            scores = np.asarray(self.fn(prompt, list(cands)), dtype=np.float64)
            if scores.shape != (n,) or not all(math.isfinite(x) for x in scores):
                raise ValueError(
                    f"ranker {self.name}: prompt {row} ({prompt[:40]!r}...) got scores "
                    f"{scores.tolist()!r}; expected {n} finite numbers, one per candidate"
                )
            out[row] = scores
        return out


def _callable_named(cfg) -> None:
    if not cfg.callable:
        raise ValueError("ranking.backend 'callable' needs ranking.callable = 'module:function'")


@register_ranker("callable", check=_callable_named)
def build_callable(cfg, ctx: RankerContext) -> CallableRanker:
    """`ranking.callable` ('module:function'), imported where the ranker runs."""
    return CallableRanker(cfg.callable)
