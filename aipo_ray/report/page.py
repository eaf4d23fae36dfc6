"""`aipo report RUN_DIR`: read a run (local or s3://, finished or not), draw it, write the page.

Iterations whose stats stage has not run yet get their statistics computed live from whatever
tables are finished, so a run in progress shows as much as exists and nothing more.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from aipo_ray.config import StorageConfig
from aipo_ray.storage import RUN_JSON, RunDir, filesystem, with_retries

from . import html as H
from . import plots
from .collect import compute_stats, list_iterations, load_iteration, read_eval
from .stats import pair_frame, stage_order

log = logging.getLogger(__name__)

# key, title, what it shows. The order is the page's order.
SECTIONS = (
    ("lengths", "Response length per iteration",
     "Mean length in tokens of all candidates, the chosen and the rejected response, and the "
     "mean chosen − rejected difference. Length exploitation (paper §4.2, Finding 2) shows as "
     "chosen lengths and the chosen − rejected gap growing from one iteration to the next."),
    ("sref_vs_length", "s_ref vs length difference",
     "One point per training pair: s_ref (how much the reference prefers the chosen response) "
     "against |y_w| − |y_l|. Paper Fig. 6 (ρ = −0.47 there): longer chosen responses get lower "
     "s_ref, which is why AIPO's α·s_ref term acts partly as a length regulariser."),
    ("sref_distribution", "s_ref distribution and agreement",
     "Histogram of s_ref; the agreement rate is the share of pairs the reference model already "
     "orders like the ranker (s_ref > 0)."),
    ("training", "Training curves",
     "Per optimizer step, iterations end to end: loss, implicit rewards of chosen and rejected, "
     "margin, reward accuracy, NLL of the chosen response and policy log-probs (paper Fig. 4: "
     "under α-DPO both rewards fall; the NLL term of AIPO holds them up)."),
    ("win_rate", "Win rate per iteration",
     "Win rate of each model over the previous one and over the base on held-out prompts, judged "
     "by the ranker in both orders, raw (WR) and length-controlled (LC WR, AlpacaEval 2 style), "
     "with bootstrap intervals. WR well above LC WR means the ranker is rewarding length."),
    ("stage_times", "Stage time split",
     "Wall time of each stage per iteration (from the stages' _SUCCESS records)."),
)


@dataclass
class RunView:
    """What the report draws: per-iteration stats, pair frames and metrics, and eval.json."""

    meta: dict[str, Any] = field(default_factory=dict)
    stats: dict[int, dict] = field(default_factory=dict)
    live: set[int] = field(default_factory=set)  # stats computed now, no stats.json yet
    frames: dict[int, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[int, pd.DataFrame] = field(default_factory=dict)
    evaluation: dict | None = None
    latest_model: str | None = None


def collect(rd: RunDir) -> RunView:
    view = RunView(latest_model=rd.latest_model(), evaluation=read_eval(rd))
    if rd.exists(RUN_JSON):
        view.meta = rd.read_json(RUN_JSON)
    for it in list_iterations(rd):
        data = load_iteration(rd, it)
        stats = data.stats
        if stats is None:
            stats = compute_stats(data)
            view.live.add(it)
        view.stats[it] = stats
        pairs = data.table("pairs")
        if pairs is not None and data.table("ref_logps") is not None:
            view.frames[it] = pair_frame(pairs, data.table("generations"), data.table("ref_logps"))
        if data.metrics is not None:
            view.metrics[it] = data.metrics
    return view


def figures(view: RunView) -> list[H.Section]:
    draw = {
        "lengths": lambda: plots.lengths(view.stats),
        "sref_vs_length": lambda: plots.sref_vs_length(view.frames),
        "sref_distribution": lambda: plots.sref_distribution(view.stats),
        "training": lambda: plots.training_curves(view.metrics),
        "win_rate": lambda: plots.win_rates(view.evaluation),
        "stage_times": lambda: plots.stage_times(view.stats),
    }
    return draw_sections(SECTIONS, draw)


def draw_sections(specs, draw: dict) -> list[H.Section]:
    """One section per (key, title, caption) of `specs`, drawn by `draw[key]()`; a plot without
    data, or one that fails, is shown as not available."""
    sections = []
    for key, title, caption in specs:
        try:
            fig = draw[key]()
        except Exception:  # one bad plot must not cost the whole report
            log.exception("plot %s failed; shown as not available", key)
            fig = None
        sections.append(H.Section(key, title, caption, plots.to_png(fig) if fig else None))
    return sections


def _g(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def iteration_table(view: RunView) -> str:
    headers = ["iteration", "pairs", "len all", "len chosen", "len rejected", "chosen−rejected",
               "agreement", "s_ref median", "logp chosen/tok", "logp rejected/tok", "similarity",
               "train steps", "final loss"]
    rows = []
    for it, s in sorted(view.stats.items()):
        label = f"{it} (in progress)" if it in view.live else str(it)
        rows.append([
            label, s.get("pairs"), _g(s, "length", "all", "mean"), _g(s, "length", "chosen", "mean"),
            _g(s, "length", "rejected", "mean"), _g(s, "length", "chosen_minus_rejected", "mean"),
            _g(s, "s_ref", "agreement_rate"), _g(s, "s_ref", "summary", "median"),
            _g(s, "ref_logps", "chosen_normalized", "mean"),
            _g(s, "ref_logps", "rejected_normalized", "mean"), _g(s, "similarity", "mean"),
            _g(s, "training", "steps"), _g(s, "training", "metrics", "loss", "last"),
        ])
    return H.table(headers, rows) if rows else f"<div class=missing>{H.NA}</div>"


def stage_table(view: RunView) -> str:
    rows = []
    for it, s in sorted(view.stats.items()):
        for name, st in sorted((s.get("stages") or {}).items(), key=lambda kv: stage_order(kv[0])):
            reasons = sorted((st.get("rejected") or {}).items())
            rows.append([it, name, st.get("rows_in"), st.get("rows_out"), st.get("rejected_total"),
                         ", ".join(f"{k}: {v}" for k, v in reasons) or "—", st.get("seconds")])
    if not rows:
        return f"<div class=missing>{H.NA}</div>"
    return H.table(["iteration", "stage", "rows in", "rows out", "rejected", "reasons",
                    "seconds"], rows, left=2)


def eval_table(view: RunView) -> str:
    comps = (view.evaluation or {}).get("comparisons") or []
    if not comps:
        return f"<div class=missing>{H.NA} (run `aipo eval RUN_DIR`)</div>"

    def ci(c, key):
        lo, hi = c[f"{key}_ci"]
        return f"{c[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = [[c["model"], c["baseline"], c["n"], ci(c, "win_rate"), ci(c, "lc_win_rate"),
             f"{c['wins']}/{c['ties']}/{c['losses']}", c["mean_length_diff"]] for c in comps]
    table = H.table(["model", "baseline", "prompts", "WR [CI]", "LC WR [CI]", "win/tie/loss",
                     "mean Δlen"], rows, left=2)
    # The models' own answer lengths on the held-out prompts: length exploitation at its source.
    models = (view.evaluation or {}).get("models") or {}
    if models:
        table += H.table(["model", "answers", "mean tokens", "mean chars", "truncated"],
                         [[name, m.get("responses"), m.get("mean_tokens"), m.get("mean_chars"),
                           m.get("truncated")] for name, m in sorted(models.items())])
    return table


def render(view: RunView, uri: str) -> tuple[str, list[H.Section]]:
    cfg = view.meta.get("config") or {}
    title = f"aipo run {cfg.get('name') or posixpath.basename(uri)}"
    meta = [
        f"run directory: {uri}",
        f"loss: {_g(cfg, 'loss', 'name') or '?'}; model: {_g(cfg, 'model', 'path') or '?'}; "
        f"iterations planned: {cfg.get('iterations', '?')}; done so far: {len(view.stats)}",
        f"latest committed model: {view.latest_model or 'none yet'}",
        f"started {view.meta.get('started_at', '?')}; report generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}",
    ]
    sections = figures(view)
    tables = [("Per iteration", iteration_table(view)), ("Win rate (aipo eval)", eval_table(view)),
              ("Stages: rows kept and rejected", stage_table(view))]
    return H.page(title, meta, tables, sections), sections


def write_report(run_dir: str, output: str | None = None,
                 storage: StorageConfig | None = None) -> str:
    """Write `index.html` and one PNG per available plot under `output` (default
    `<run_dir>/report`); return the page's URI."""
    rd = RunDir(run_dir, storage or StorageConfig())
    if not rd.exists(""):
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    page, sections = render(collect(rd), rd.uri)
    out = (output or rd.uri_of("report")).rstrip("/")
    publish(out, rd.storage, {**section_files(sections), "index.html": page.encode("utf-8")})
    return f"{out}/index.html"


def section_files(sections: list[H.Section]) -> dict[str, bytes | None]:
    """`<key>.png` per section; None for a plot not drawn, so an older PNG is removed."""
    return {f"{s.key}.png": s.png for s in sections}


def publish(out: str, storage: StorageConfig, files: dict[str, bytes | None]) -> None:
    """Write `files` (name -> bytes) into the directory `out` (local or s3://), in order; a name
    mapped to None is removed if an earlier report left it (a plot that has no data now)."""
    fs, root = filesystem(out, storage)
    with_retries(lambda: fs.makedirs(root, exist_ok=True), f"mkdir {out}", storage)
    for name, body in files.items():
        path = posixpath.join(root, name)
        if body is None:
            with_retries(lambda p=path: fs.exists(p) and fs.rm(p), f"remove {out}/{name}", storage)
            continue
        with_retries(lambda p=path, b=body: fs.pipe_file(p, b), f"write {out}/{name}", storage)
