"""`aipo compare RUN_DIR...`: the variants of a sweep side by side (paper Fig. 2, 3, 4, 7, Tab. 2).

Writes `index.html`, one PNG per figure and `compare.json` to the output directory (default: the
sweep root's `compare/`). `compare.json` is

    {"variants": {NAME: {"run_dir": ..., "iterations": [{"iteration": i,
        "mean_response_tokens": ..., "mean_chosen_tokens": ..., "mean_rejected_tokens": ...,
        "win_rate_vs_base": ..., "lc_win_rate_vs_base": ..., <more, see ROW_KEYS>}, ...]}},
     "evaluation": {prompts, judge, generation} or null, "generated_at": ...}

NAME is the last component of the run directory. The data columns of iteration i describe the
pairs θ_{i-1} generated and the trainer used (from `iter_NNN/stats.json`, or computed from the
finished tables the same way while a run is in progress); the win rates of iteration i are
θ_i's (the model iteration i trained) against θ_0 (compare_eval.py).
"""

from __future__ import annotations

import json
import logging
import posixpath
from datetime import datetime, timezone
from typing import Any

from aipo_ray.config import StorageConfig
from aipo_ray.storage import RunDir, filesystem, with_retries

from . import compare_plots as CP
from . import html as H
from .collect import load_run_config, stage_successes
from .compare_eval import Variant, vs_base_win_rates
from .page import RunView, collect, draw_sections, publish, section_files
from .plots import overlaid_training_curves

log = logging.getLogger(__name__)
COMPARE_JSON = "compare.json"
JUDGEMENTS_JSON = "judgements.json"  # the configured judge's scores by content (compare_eval.py)
SWEEP_JSON = "sweep.json"  # aipo_ray.sweeps.SWEEP_JSON; not imported: report stays below pipeline

# compare.json key -> path into stats.json
ROW_KEYS = {
    "pairs": ("pairs",),
    "mean_response_tokens": ("length", "all", "mean"),
    "mean_chosen_tokens": ("length", "chosen", "mean"),
    "mean_rejected_tokens": ("length", "rejected", "mean"),
    "mean_chosen_minus_rejected_tokens": ("length", "chosen_minus_rejected", "mean"),
    "sref_agreement": ("s_ref", "agreement_rate"),
    "chosen_rejected_similarity": ("similarity", "mean"),
    "ref_chosen_logp": ("ref_logps", "chosen", "mean"),
    "ref_rejected_logp": ("ref_logps", "rejected", "mean"),
    "ref_chosen_logp_per_token": ("ref_logps", "chosen_normalized", "mean"),
    "ref_rejected_logp_per_token": ("ref_logps", "rejected_normalized", "mean"),
    "train_steps": ("training", "steps"),
    "final_loss": ("training", "metrics", "loss", "last"),
}
SECTIONS = (
    ("lengths", "Response length per iteration",
     "Mean tokens of all candidates, of the chosen and rejected responses the trainer used, and "
     "their difference, per variant (paper Fig. 2 right, Finding 2: length exploitation grows "
     "with the iterations; the objectives differ in how fast)."),
    ("reference", "Chosen vs rejected under the reference (paper Tab. 2)",
     "Agreement P(s_ref > 0), chosen–rejected similarity, and the reference log-probs of chosen "
     "and rejected, summed and per token."),
    ("win_rate", "Win rate against θ_0",
     "Each variant's θ_t against the common θ_0 on the same held-out prompts with the same "
     "judge, raw and length-controlled (paper Fig. 2 left, Fig. 3)."),
    ("length_vs_lc", "Final LC win rate against answer length (paper Fig. 7)",
     "One point per variant: its last evaluated model's LC win rate against θ_0 and its mean "
     "answer length on the held-out prompts. Top left is best."),
    ("training", "Training curves, overlaid (paper Fig. 4)",
     "Loss, rewards, margin, accuracy, NLL and policy log-probs per optimizer step, iterations "
     "end to end, one colour per variant (solid: first metric of a panel, dashed: second)."),
)


def default_output(run_dirs: list[str], storage: StorageConfig | None = None) -> str:
    """`<sweep root>/compare` when every run shares one parent holding `sweep.json`."""
    parents = {posixpath.dirname(d.rstrip("/")) for d in run_dirs}
    if len(parents) == 1:
        parent = parents.pop()
        if parent and RunDir(parent, storage or StorageConfig()).exists(SWEEP_JSON):
            return f"{parent}/compare"
    raise ValueError("the run directories are not the variants of one sweep (no common parent "
                     f"with {SWEEP_JSON}); name where to write with --output DIR")


def expand_sweep_roots(paths: list[str], storage: StorageConfig) -> list[str]:
    """Run directories, with a sweep root (a directory holding `sweep.json`) standing for its
    variants, in the sweep's order: `aipo compare runs/objectives_tiny`."""
    out = []
    for path in paths:
        root = RunDir(path, storage)
        if root.exists(SWEEP_JSON) and not root.exists("run.json"):
            names = [v["name"] for v in root.read_json(SWEEP_JSON).get("variants") or []]
            out += [f"{path.rstrip('/')}/{name}" for name in names]
        else:
            out.append(path)
    return out


def compare_runs(run_dirs: list[str], output: str | None = None, evaluate: bool = True,
                 overrides: list[str] | None = None, *, storage: StorageConfig | None = None,
                 ranker=None, generate_fn=None) -> dict[str, Any]:
    """Write the comparative report of `run_dirs` to `output`; return `compare.json`'s content.

    `evaluate=False` compares the data only (no generation, no judge). `overrides` apply to the
    first run's config for the win rates (eval.*, ranking.*); `ranker` and `generate_fn` replace
    the configured judge and the generation component as in `evaluate_run`.
    """
    storage = storage or StorageConfig()
    run_dirs = expand_sweep_roots(run_dirs, storage)
    variants = _variants(run_dirs, storage)
    out = (output or default_output(run_dirs, storage)).rstrip("/")
    views = {v.name: collect(v.rd) for v in variants}
    evaluation, judgements = (_win_rates(variants, out, overrides, storage, ranker, generate_fn)
                              if evaluate else (None, None))
    result = {
        "variants": {v.name: {"run_dir": v.rd.uri, **_describe(views[v.name]),
                              "shared": shared_work(v.rd, views[v.name]),
                              "iterations": iteration_rows(views[v.name], evaluation, v.name)}
                     for v in variants},
        "evaluation": evaluation and evaluation["settings"],
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    sections = figures(result, views)
    page = render(result, sections, out)
    files = {**section_files(sections), COMPARE_JSON: json.dumps(result, indent=2).encode()}
    if judgements is not None:
        files[JUDGEMENTS_JSON] = json.dumps(judgements).encode()
    publish(out, storage, {**files, "index.html": page.encode("utf-8")})
    log.info("comparison of %d variants written to %s/index.html", len(variants), out)
    return {**result, "output": out}


def _win_rates(variants: list[Variant], out: str, overrides: list[str] | None,
               storage: StorageConfig, ranker, generate_fn) -> tuple[dict, dict]:
    """vs_base_win_rates with the first run's config and the judge cache kept in `out`."""
    config = load_run_config(variants[0].rd, overrides)
    _warn_on_other_judges(variants, config)
    judgements = read_json_or(f"{out}/{JUDGEMENTS_JSON}", storage, {})
    evaluation = vs_base_win_rates(variants, config, ranker=ranker, generate_fn=generate_fn,
                                   judgements=judgements)
    return evaluation, judgements


def read_json_or(uri: str, storage: StorageConfig, default: Any) -> Any:
    """The JSON document at `uri`, or `default` when there is none or it is damaged."""
    fs, path = filesystem(uri, storage)
    if not with_retries(lambda: fs.exists(path), f"stat {uri}", storage):
        return default
    try:
        return json.loads(with_retries(lambda: fs.cat_file(path), f"read {uri}", storage))
    except ValueError:
        log.warning("%s is not valid JSON; starting afresh", uri)
        return default


def _variants(run_dirs: list[str], storage: StorageConfig) -> list[Variant]:
    if not run_dirs:
        raise ValueError("nothing to compare: name at least one run directory")
    variants = [Variant(posixpath.basename(d.rstrip("/")), RunDir(d, storage)) for d in run_dirs]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"run directories must have distinct last components, got {names}")
    for v in variants:
        if not v.rd.exists("run.json"):
            raise FileNotFoundError(f"{v.rd.uri}: no run.json; is this a run directory?")
    return variants


def _warn_on_other_judges(variants: list[Variant], config) -> None:
    for v in variants:
        own = v.rd.read_json("run.json")["config"].get("ranking")
        if own != config.ranking.model_dump(mode="json"):
            log.warning("compare: %s was ranked differently in training; every variant is "
                        "judged by %s %s here", v.name, config.ranking.backend,
                        config.ranking.model)


def _get(d: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _describe(view: RunView) -> dict[str, Any]:
    cfg = view.meta.get("config") or {}
    return {"loss": (cfg.get("loss") or {}).get("name"), "latest_model": view.latest_model}


def shared_work(rd: RunDir, view: RunView) -> dict[str, Any]:
    """Stages this variant took from another (`reused_from`) and the compute time that saved:
    the seconds the source spent, which the copy's `_SUCCESS` keeps."""
    reused = [rec for it in view.stats for rec in stage_successes(rd, it).values()
              if rec.get("reused_from")]
    return {"stages_reused": len(reused),
            "seconds_saved": sum(float(r.get("seconds") or 0.0) for r in reused)}


def iteration_rows(view: RunView, evaluation: dict | None, name: str) -> list[dict[str, Any]]:
    """compare.json's rows of one variant: stats per iteration, win rates of θ_i vs θ_0."""
    ev = ((evaluation or {}).get("variants") or {}).get(name) or {}
    by_iteration = {c["iteration"]: c for c in ev.get("comparisons") or []}
    models = ev.get("models") or {}
    rows = []
    for it in sorted(set(view.stats) | set(by_iteration)):
        stats = view.stats.get(it) or {}
        row: dict[str, Any] = {"iteration": it, "in_progress": it in view.live}
        row.update({key: _get(stats, path) for key, path in ROW_KEYS.items()})
        c = by_iteration.get(it) or {}
        for key in ("win_rate", "lc_win_rate"):
            row[f"{key}_vs_base"] = c.get(key)
            row[f"{key}_vs_base_ci"] = c.get(f"{key}_ci")
        row["eval_prompts"] = c.get("n")
        row["eval_mean_tokens"] = _get(models, (f"iter_{it:03d}", "mean_tokens"))
        rows.append(row)
    return rows


def figures(result: dict[str, Any], views: dict[str, RunView]) -> list[H.Section]:
    series = {name: v["iterations"] for name, v in result["variants"].items()}
    draw = {
        "lengths": lambda: CP.per_iteration(series, CP.LENGTH_PANELS, "Response length"),
        "reference": lambda: CP.per_iteration(series, CP.REFERENCE_PANELS, "Reference"),
        "win_rate": lambda: CP.win_rates(series),
        "length_vs_lc": lambda: CP.length_vs_lc_win_rate(series),
        "training": lambda: overlaid_training_curves({n: v.metrics for n, v in views.items()}),
    }
    return draw_sections(SECTIONS, draw)


def render(result: dict[str, Any], sections: list[H.Section], out: str) -> str:
    ev = result.get("evaluation")
    meta = [f"{name}: {v['run_dir']} (loss {v['loss']}, latest {v['latest_model']}; "
            f"{v['shared']['stages_reused']} stages taken from other variants, "
            f"{v['shared']['seconds_saved']:.0f} s of compute saved)"
            for name, v in result["variants"].items()]
    meta.append("win rates: " + (
        f"{ev['prompts']['n']} held-out prompts ({ev['prompts']['source']}), judge "
        f"{ev['judge']['backend']} {ev['judge']['callable'] or ev['judge']['model']}, "
        f"answers up to {ev['generation']['max_tokens']} tokens" if ev else
        "not computed (--no-eval)"))
    meta.append(f"written to {out} at {result['generated_at']}")
    headers = ["variant", "iteration", "pairs", "len all", "len chosen", "len rejected",
               "chosen−rejected", "agreement", "similarity", "logp chosen/tok",
               "logp rejected/tok", "WR vs θ_0", "LC WR vs θ_0", "answer tokens"]
    keys = ["pairs", "mean_response_tokens", "mean_chosen_tokens", "mean_rejected_tokens",
            "mean_chosen_minus_rejected_tokens", "sref_agreement", "chosen_rejected_similarity",
            "ref_chosen_logp_per_token", "ref_rejected_logp_per_token", "win_rate_vs_base",
            "lc_win_rate_vs_base", "eval_mean_tokens"]
    rows = [[name, f"{r['iteration']}{' (in progress)' if r['in_progress'] else ''}",
             *(r.get(k) for k in keys)]
            for name, v in result["variants"].items() for r in v["iterations"]]
    table = H.table(headers, rows, left=2) if rows else f"<div class=missing>{H.NA}</div>"
    return H.page("aipo compare", meta, [("Per variant and iteration", table)], sections)
