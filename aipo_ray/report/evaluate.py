"""`aipo eval RUN_DIR`: win rate of each committed model over the previous one and over the base.

1. Held-out prompts: `eval.prompts` when set, else the run's seed prompts that no iteration
   trained on (absent from every `pairs` table); `eval.num_prompts` of them, sampled with
   `eval.seed`.
2. Every model answers once per prompt with the generation component (greedy by default,
   `eval.temperature`), its responses cached under `<run>/eval/responses/iter_NNN/` and reused
   while the prompts and sampling settings stay the same.
3. The configured ranker judges each (model, baseline) pair in both orders; the judge is fixed
   for the whole evaluation (`ranking.model: policy` means θ_0, never the model being judged).
4. Win rate, length-controlled win rate and bootstrap intervals (report/winrate.py) go to
   `<run>/eval.json`, which `aipo report` plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from aipo_ray.config import RunConfig, StorageConfig
from aipo_ray.generation.engines import release_engines
from aipo_ray.storage import MODELS, RunDir, iteration_name, tables, with_retries

from .collect import EVAL_JSON, list_iterations, load_run_config, read_finished_table
from .winrate import both_order_outcomes, compare

log = logging.getLogger(__name__)

RESPONSES = "eval/responses"
_ITER = re.compile(r"^iter_(\d{3,})$")
_JUDGE_CHUNK = 32  # prompts per ranker call: bounds memory, not results


def committed_models(rd: RunDir) -> list[int]:
    """Iterations with a usable model: 0 (the base pointer) and every committed iter_NNN."""
    from aipo_ray.models import POINTER
    from aipo_ray.storage.checkpoint import COMMITTED

    root = rd.path(MODELS)
    if not rd.exists(MODELS):
        return []
    names = with_retries(lambda: rd.fs.ls(root, detail=False), f"list {rd.uri_of(MODELS)}",
                         rd.storage)
    found = []
    for name in sorted(posixpath.basename(n.rstrip("/")) for n in names):
        m = _ITER.match(name)
        if m is None:
            continue
        it = int(m.group(1))
        if rd.exists(MODELS, name, COMMITTED) or (it == 0 and rd.exists(MODELS, name, POINTER)):
            found.append(it)
    return found


def heldout_prompts(config: RunConfig, rd: RunDir, trained_in: Sequence[RunDir] = ()
                    ) -> tuple[pd.DataFrame, str]:
    """(prompt_id, prompt) frame of at most `eval.num_prompts` held-out prompts, and its source.

    Without `eval.prompts`, a seed prompt is held out when no iteration of `rd` (and of every
    run in `trained_in`: the variants `aipo compare` judges on one prompt set) trained on it.
    """
    from aipo_ray.config import PromptsConfig, PromptSourceConfig
    from aipo_ray.data.sources import load_prompts

    cfg = config.eval
    if cfg.prompts:
        pool = PromptsConfig(sources=[PromptSourceConfig(path=cfg.prompts)])
        frame, source = load_prompts(pool, config.storage).table.to_pandas(), cfg.prompts
    else:
        frame = load_prompts(config.prompts, config.storage).table.to_pandas()
        trained = set()
        for run in (rd, *trained_in):
            for it in list_iterations(run):
                pairs = read_finished_table(run, it, "pairs")
                if pairs is not None:
                    trained |= set(pairs["prompt_id"])
        frame = frame[~frame["prompt_id"].isin(trained)]
        source = "seed prompts not used in training"
    if frame.empty:
        raise ValueError(
            f"{rd.uri}: no held-out prompts ({source}); set eval.prompts to a prompt file "
            "(jsonl/parquet/csv) that training did not use"
        )
    frame = frame.sort_values("prompt_id").reset_index(drop=True)
    if len(frame) > cfg.num_prompts:
        keep = np.random.default_rng(cfg.seed).choice(len(frame), cfg.num_prompts, replace=False)
        frame = frame.iloc[np.sort(keep)].reset_index(drop=True)
    return frame[["prompt_id", "prompt"]], source


def model_identity(rd: RunDir, it: int) -> str | None:
    """What a model's weights are: its `_COMMITTED` record (the manifest's sha256) or, for the
    base, its pointer. A recommitted model gets new responses, not stale cached ones."""
    from aipo_ray.models import POINTER
    from aipo_ray.storage.checkpoint import COMMITTED

    name = iteration_name(it)
    return rd.read_text(posixpath.join(MODELS, name, COMMITTED)) or rd.read_text(
        posixpath.join(MODELS, name, POINTER))


def eval_max_tokens(config: RunConfig) -> int:
    """`eval.max_tokens`, by default the generation budget: a model judged with a shorter budget
    than it trained with would have its (longer) answers cut, hiding length exploitation."""
    return config.eval.max_tokens or config.generation.max_tokens


def _responses_fingerprint(config: RunConfig, prompts: pd.DataFrame, model_uri: str,
                           identity: str | None) -> str:
    cfg = config.eval
    payload = {"prompts": sorted(prompts["prompt_id"]), "model": model_uri, "weights": identity,
               "max_tokens": eval_max_tokens(config), "temperature": cfg.temperature,
               "top_p": cfg.top_p,
               "backend": config.generation.backend, "seed": config.generation.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_generate(config: RunConfig) -> Callable[[pd.DataFrame, str], pd.DataFrame]:
    """One greedy (or configured) response per prompt through `aipo_ray.generation.generate`.

    A vLLM engine stays held from one model to the next, which then loads its weights into it
    instead of starting a new one (generation/engines.py): answer with every model first, then
    `release_engines()` before judging, which needs the CPUs (or GPUs) back.
    """

    def run(prompts: pd.DataFrame, model_uri: str) -> pd.DataFrame:
        import ray.data

        from aipo_ray.generation import generate
        from aipo_ray.runtime import init_ray

        init_ray(config.ray)
        ds = ray.data.from_pandas(prompts[["prompt_id", "prompt"]])
        return generate(ds, model_uri, config.generation, n=1, max_tokens=eval_max_tokens(config),
                        temperature=config.eval.temperature, top_p=config.eval.top_p,
                        storage=config.storage, model=config.model).to_pandas()

    return run


def model_responses(config: RunConfig, rd: RunDir, it: int, prompts: pd.DataFrame,
                    generate_fn) -> pd.DataFrame:
    """Responses of model `it`, from the cache when its fingerprint matches, else generated."""
    uri = rd.model_uri(it)
    directory = rd.path(RESPONSES, iteration_name(it))
    fp = _responses_fingerprint(config, prompts, uri, model_identity(rd, it))
    done = with_retries(lambda: tables.read_success(rd.fs, directory), "read eval cache", rd.storage)
    if done and done.get("fingerprint") == fp:
        return tables.read_table(rd.fs, directory).to_pandas()
    log.info("eval: generating %d responses with %s", len(prompts), uri)
    out = generate_fn(prompts, uri)
    out = out[["prompt_id", "response", "num_tokens", "finish_reason"]].drop_duplicates("prompt_id")
    table = pa.Table.from_pandas(out, preserve_index=False)

    def write() -> None:
        tables.clear_directory(rd.fs, directory)
        tables.write_table(rd.fs, directory, table)
        tables.write_success(rd.fs, directory, {"fingerprint": fp, "rows": len(out)})

    with_retries(write, f"write {rd.uri_of(RESPONSES, iteration_name(it))}", rd.storage)
    return out


def judge(ranker, prompts: list[str], model: list[str], baseline: list[str]) -> np.ndarray:
    """Per-prompt outcome of `model` over `baseline`, both candidate orders averaged; NaN where
    the judge gave either response no score (http_judge's unreadable reply), never a loss."""
    firsts, seconds = [], []
    for i in range(0, len(prompts), _JUDGE_CHUNK):
        p, a, b = prompts[i:i + _JUDGE_CHUNK], model[i:i + _JUDGE_CHUNK], baseline[i:i + _JUDGE_CHUNK]
        firsts.append(np.asarray(ranker.score(p, [[x, y] for x, y in zip(a, b, strict=True)])))
        seconds.append(np.asarray(ranker.score(p, [[y, x] for x, y in zip(a, b, strict=True)])))
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    unjudged = np.isnan(first).any(axis=1) | np.isnan(second).any(axis=1)
    return np.where(unjudged, np.nan, both_order_outcomes(first, second))


def comparison_plan(models: list[int], compare_to_base: bool) -> list[tuple[int, int, str]]:
    """(model, baseline, kind): each model over the previous one, and over the base."""
    plan = []
    for k, it in enumerate(models[1:], start=1):
        plan.append((it, models[k - 1], "vs_previous"))
        if compare_to_base and models[k - 1] != models[0]:
            plan.append((it, models[0], "vs_base"))
    return plan


def default_ranker(config: RunConfig, rd: RunDir):
    from aipo_ray.models import resolve_model_path
    from aipo_ray.ranking import build_ranker

    return build_ranker(config.ranking, resolve_model_path(rd.model_uri(0), config.storage),
                        storage=config.storage, model=config.model)


def evaluate_run(run_dir: str, overrides: list[str] | None = None, *,
                 storage: StorageConfig | None = None, ranker=None, generate_fn=None) -> dict:
    """Judge every committed model against the previous one (and the base); write eval.json.

    `ranker` (anything with `score(prompts, candidates) -> [B, N]`) and `generate_fn`
    ((prompts frame, model URI) -> frame with prompt_id, response, num_tokens, finish_reason)
    default to the configured ranker and the generation component.
    """
    rd = RunDir(run_dir, storage or StorageConfig())
    config = load_run_config(rd, overrides)
    rd = RunDir(run_dir, storage or config.storage)
    models = committed_models(rd)
    if len(models) < 2:
        raise ValueError(f"{rd.uri}: nothing to compare yet; committed models: "
                         f"{[iteration_name(m) for m in models] or 'none'}")
    prompts, source = heldout_prompts(config, rd)
    generate_fn = generate_fn or default_generate(config)
    responses = {it: model_responses(config, rd, it, prompts, generate_fn).set_index("prompt_id")
                 for it in models}
    release_engines()  # the judge needs the CPUs (or GPUs) the answering engine holds
    ranker = ranker or default_ranker(config, rd)
    comparisons = [_compare_pair(config, ranker, prompts, responses, a, b, kind)
                   for a, b, kind in comparison_plan(models, config.eval.compare_to_base)]
    result = {
        "run_dir": rd.uri, "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompts": {"n": len(prompts), "source": source},
        "judge": {"backend": config.ranking.backend, "model": config.ranking.model,
                  "orders": "both, averaged"},
        "generation": {"backend": config.generation.backend, "max_tokens": eval_max_tokens(config),
                       "temperature": config.eval.temperature, "top_p": config.eval.top_p},
        "models": {iteration_name(it): _model_summary(responses[it]) for it in models},
        "comparisons": comparisons,
    }
    rd.write_json(EVAL_JSON, result)
    return result


def _compare_pair(config: RunConfig, ranker, prompts: pd.DataFrame, responses: dict, a: int,
                  b: int, kind: str) -> dict[str, Any]:
    ids = [p for p in prompts["prompt_id"] if p in responses[a].index and p in responses[b].index]
    ra, rb = responses[a].loc[ids], responses[b].loc[ids]
    texts = dict(zip(prompts["prompt_id"], prompts["prompt"], strict=True))
    outcomes = judge(ranker, [texts[i] for i in ids], list(ra["response"]),
                     list(rb["response"]))
    diff = ra["num_tokens"].to_numpy(dtype=np.float64) - rb["num_tokens"].to_numpy(dtype=np.float64)
    judged = ~np.isnan(outcomes)
    if not judged.any():
        raise ValueError(f"eval: the judge scored none of the {len(ids)} answers of "
                         f"{iteration_name(a)} vs {iteration_name(b)} (see its log)")
    outcomes, diff = outcomes[judged], diff[judged]
    stats = compare(outcomes, diff, samples=config.eval.bootstrap_samples,
                    confidence=config.eval.confidence, seed=config.eval.seed)
    log.info("eval: %s over %s: WR %.3f, LC WR %.3f (n=%d)", iteration_name(a), iteration_name(b),
             stats["win_rate"], stats["lc_win_rate"], stats["n"])
    return {"model": iteration_name(a), "baseline": iteration_name(b), "kind": kind,
            "iteration": a, **stats, "unjudged": int((~judged).sum())}


def _model_summary(frame: pd.DataFrame) -> dict[str, Any]:
    return {"responses": len(frame), "mean_tokens": float(frame["num_tokens"].mean()),
            "mean_chars": float(frame["response"].str.len().mean()),
            "truncated": int((frame["finish_reason"] == "length").sum())}

