"""Win rates of every variant's models against the common θ_0, for `aipo compare` (paper Fig. 2
left, Fig. 3): one judge, one set of held-out prompts and one sampling setup for all variants.

- Settings: the first run's config with the command line's overrides (`eval.*`, `ranking.*`,
  ...). Variants that differ in their ranker (rankers_length.yaml) are thus judged by one judge;
  pick it with `ranking.*` overrides.
- Prompts: `eval.prompts` when set; else the seed prompts that no iteration of any variant
  trained on, so every model answers the same prompts.
- Responses come from `aipo eval`'s cache in each run (`<run>/eval/responses/iter_NNN/`): a
  model that already answered these prompts with these settings is not asked again, and what is
  generated here is cached there for `aipo eval`. That cache is per run directory, so θ_0, which
  the variants share, is generated (or read) once, in the first run that has it, and its answers
  serve every variant with the same base (equal `models/iter_000` pointer).
- Judgements of the configured judge are remembered by content (judge settings, prompt, the
  two answers in order) in `judgements` (compare.py keeps them in `<output>/judgements.json`),
  so running the comparison again judges only what is new. A judge passed in as an object
  (`ranker=`) has no identity to key on and is always asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from aipo_ray.config import RunConfig
from aipo_ray.generation.engines import release_engines
from aipo_ray.storage import RunDir, iteration_name

from .evaluate import (
    _compare_pair,
    _model_summary,
    committed_models,
    default_generate,
    default_ranker,
    eval_max_tokens,
    heldout_prompts,
    model_identity,
    model_responses,
)

log = logging.getLogger(__name__)


@dataclass
class Variant:
    """One compared run: its name (the run directory's last component) and where it is."""

    name: str
    rd: RunDir


class CachedJudge:
    """The configured judge, built on first need, with its scores remembered in `scores` by
    content: sha256 of (judge identity, prompt, candidates in order) -> one score per candidate."""

    def __init__(self, build, identity: str, scores: dict[str, list[float]]):
        self.build, self.identity, self.scores = build, identity, scores
        self.ranker = None
        self.asked = 0  # rows the judge itself scored (not from the cache)

    def _key(self, prompt: str, candidates: list[str]) -> str:
        text = json.dumps([self.identity, prompt, list(candidates)], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def score(self, prompts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        keys = [self._key(p, c) for p, c in zip(prompts, candidates, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in self.scores]
        fresh: dict[str, list[float]] = {}
        if todo:
            self.ranker = self.ranker or self.build()
            new = self.ranker.score([prompts[i] for i in todo], [candidates[i] for i in todo])
            for i, row in zip(todo, new, strict=True):
                fresh[keys[i]] = [float(x) for x in row]
                if all(math.isfinite(x) for x in fresh[keys[i]]):  # unjudged: ask again next time
                    self.scores[keys[i]] = fresh[keys[i]]
            self.asked += len(todo)
        return [fresh[k] if k in fresh else self.scores[k] for k in keys]


def configured_judge(config: RunConfig, rd: RunDir, scores: dict) -> CachedJudge:
    """`default_ranker` behind a content cache; a judge that is θ_0 (`ranking.model: policy`)
    is known by θ_0's identity, any other by its settings."""
    identity = {"ranking": config.ranking.model_dump(mode="json"),
                "policy": model_identity(rd, 0) if config.ranking.model == "policy" else None}
    return CachedJudge(lambda: default_ranker(config, rd), json.dumps(identity, sort_keys=True),
                       scores)


def vs_base_win_rates(variants: list[Variant], config: RunConfig, *, ranker=None,
                      generate_fn=None, judgements: dict | None = None) -> dict[str, Any]:
    """Every committed θ_t (t ≥ 1) of every variant judged against θ_0 on common prompts.

    Returns the settings used and, per variant, its comparisons (as in `eval.json`) and the mean
    answer length of each of its models on the held-out prompts. `judgements` is the
    configured judge's score cache (see CachedJudge), updated in place.
    """
    first = variants[0].rd
    prompts, source = heldout_prompts(config, first, [v.rd for v in variants[1:]])
    generate_fn = generate_fn or default_generate(config)
    # Every model answers first, one after the other on one held engine (each loads its weights
    # into it), then the engine is released and the judge runs.
    bases: dict[str | None, tuple[str, pd.DataFrame]] = {}
    answers: dict[str, dict[int, pd.DataFrame]] = {}
    for v in variants:
        models = committed_models(v.rd)
        if 0 not in models or len(models) < 2:
            log.warning("compare: %s has no committed model to judge yet; left out", v.name)
            continue
        identity = model_identity(v.rd, 0)
        if identity not in bases:  # θ_0 answers once per distinct base model
            bases[identity] = (v.rd.uri, model_responses(config, v.rd, 0, prompts, generate_fn))
        answers[v.name] = {0: bases[identity][1].set_index("prompt_id")}
        for it in models[1:]:
            answers[v.name][it] = model_responses(config, v.rd, it, prompts,
                                                  generate_fn).set_index("prompt_id")
    release_engines()

    out: dict[str, Any] = {}
    judge = ranker or configured_judge(config, first, {} if judgements is None else judgements)
    for v in variants:
        responses = answers.get(v.name)
        if responses is None:
            out[v.name] = {"comparisons": [], "models": {}}
            continue
        out[v.name] = {
            "comparisons": [_compare_pair(config, judge, prompts, responses, it, 0, "vs_base")
                            for it in sorted(responses)[1:]],
            "models": {iteration_name(it): _model_summary(frame.reset_index())
                       for it, frame in responses.items()},
            "base_responses_from": bases[model_identity(v.rd, 0)][0],
        }
    return {"settings": settings(config, len(prompts), source), "variants": out}


def settings(config: RunConfig, n_prompts: int, source: str) -> dict[str, Any]:
    """What every win rate of the comparison shares: prompts, judge, sampling."""
    return {
        "prompts": {"n": n_prompts, "source": source},
        "judge": {"backend": config.ranking.backend, "model": config.ranking.model,
                  "callable": config.ranking.callable, "orders": "both, averaged"},
        "generation": {"backend": config.generation.backend, "max_tokens": eval_max_tokens(config),
                       "temperature": config.eval.temperature, "top_p": config.eval.top_p},
    }
