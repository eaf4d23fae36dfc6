"""The report's figures (matplotlib, Agg). Each returns a Figure, or None when its data does not
exist yet (a run in progress), so the page can say "not yet available" instead of failing."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

# Figure objects without pyplot: no global state, no display backend, safe in threads and jobs.
from matplotlib.figure import Figure

from .stats import stage_order

# (panel title, metrics.jsonl keys drawn in it): TRL's names, as the trainer logs them.
TRAINING_PANELS = (
    ("loss", ("loss",)),
    ("rewards", ("rewards/chosen", "rewards/rejected")),
    ("reward margin", ("rewards/margins",)),
    ("reward accuracy", ("rewards/accuracies",)),
    ("NLL of chosen (per token)", ("nll",)),
    ("policy log-probs", ("logps/chosen", "logps/rejected")),
)
MAX_SCATTER_POINTS = 4000


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _subplots(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def _get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def lengths(stats: dict[int, dict]) -> Figure | None:
    """Mean response length per iteration (all, chosen, rejected) and chosen − rejected."""
    its = [i for i in sorted(stats) if _get(stats[i], "length", "all", "mean") is not None]
    if not its:
        return None
    fig, (ax, ax2) = _subplots((11, 4), 1, 2)
    for key, style in (("all", "o-"), ("chosen", "s-"), ("rejected", "v-")):
        ys = [_get(stats[i], "length", key, "mean") for i in its]
        if any(y is not None for y in ys):
            ax.plot(its, [np.nan if y is None else y for y in ys], style, label=f"{key} (mean)")
        p90 = [_get(stats[i], "length", key, "p90") for i in its]
        if key == "chosen" and any(y is not None for y in p90):
            ax.plot(its, [np.nan if y is None else y for y in p90], "s:", alpha=0.5,
                    label="chosen (p90)")
    ax.set(title="Response length per iteration", xlabel="iteration", ylabel="tokens")
    ax.set_xticks(its)
    ax.legend()
    diffs = [_get(stats[i], "length", "chosen_minus_rejected", "mean") for i in its]
    ax2.bar(its, [0 if d is None else d for d in diffs],
            color=["tab:red" if (d or 0) > 0 else "tab:blue" for d in diffs])
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set(title="Chosen − rejected length (mean)", xlabel="iteration", ylabel="tokens")
    ax2.set_xticks(its)
    return fig


def sref_vs_length(frames: dict[int, pd.DataFrame]) -> Figure | None:
    """s_ref against |y_w| − |y_l| per pair, one colour per iteration (paper Fig. 6)."""
    usable = {i: f for i, f in frames.items()
              if f is not None and "s_ref" in f and f[["s_ref", "length_diff"]].notna().all(axis=1).any()}
    if not usable:
        return None
    fig, ax = _subplots((7, 5))
    for i in sorted(usable):
        f = usable[i][["s_ref", "length_diff"]].dropna()
        if len(f) > MAX_SCATTER_POINTS:
            f = f.sample(MAX_SCATTER_POINTS, random_state=0)
        rho = f["s_ref"].corr(f["length_diff"]) if len(f) > 1 else float("nan")
        ax.scatter(f["length_diff"], f["s_ref"], s=10, alpha=0.5,
                   label=f"iteration {i} (ρ = {rho:.2f}, n = {len(f)})")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(title="s_ref vs length difference (paper Fig. 6)", xlabel="|y_w| − |y_l| (tokens)",
           ylabel="s_ref = log π_ref(y_w) − log π_ref(y_l)")
    ax.legend(fontsize=8)
    return fig


def sref_distribution(stats: dict[int, dict]) -> Figure | None:
    """Histogram of s_ref per iteration with its agreement rate P(s_ref > 0)."""
    its = [i for i in sorted(stats) if _get(stats[i], "s_ref", "histogram", "counts")]
    if not its:
        return None
    fig, ax = _subplots((7, 4))
    for i in its:
        h = stats[i]["s_ref"]["histogram"]
        edges = np.asarray(h["edges"])
        ax.stairs(h["counts"], edges, label=f"iteration {i} "
                  f"(agreement {stats[i]['s_ref']['agreement_rate']:.0%})")
    ax.axvline(0, color="black", lw=0.8)
    ax.set(title="s_ref distribution", xlabel="s_ref", ylabel="pairs")
    ax.legend(fontsize=8)
    return fig


def training_curves(metrics: dict[int, pd.DataFrame]) -> Figure | None:
    """Loss, rewards, margin, accuracy, NLL and log-probs per optimizer step (paper Fig. 4);
    iterations are laid end to end, separated by dotted lines."""
    return overlaid_training_curves({"": metrics})


def _step_layout(metrics: dict[int, pd.DataFrame]) -> tuple[list[int], dict[int, int]]:
    """Iterations with metrics and the optimizer-step offset at which each one starts."""
    its = [i for i in sorted(metrics) if metrics[i] is not None and len(metrics[i])]
    offsets, start = {}, 0
    for i in its:
        offsets[i] = start
        start += len(metrics[i])
    return its, offsets


def _metric_series(metrics: dict[int, pd.DataFrame], its: list[int], offsets: dict[int, int],
                   key: str) -> tuple[np.ndarray, np.ndarray] | None:
    xs, ys = [], []
    for i in its:
        m = metrics[i]
        if key in m:
            xs.append(offsets[i] + np.arange(1, len(m) + 1))
            ys.append(pd.to_numeric(m[key], errors="coerce").to_numpy())
    return (np.concatenate(xs), np.concatenate(ys)) if xs else None


def overlaid_training_curves(runs: dict[str, dict[int, pd.DataFrame]]) -> Figure | None:
    """`training_curves` of several runs in one figure (name -> per-iteration metrics): one
    colour per run, solid/dashed per metric of a panel. One run keeps the default colours."""
    layouts = {name: _step_layout(m) for name, m in runs.items()}
    layouts = {name: lay for name, lay in layouts.items() if lay[0]}
    if not layouts:
        return None
    fig, axes = _subplots((14, 7), 2, 3)
    # Iteration boundaries only where every run has them at the same steps.
    bounds = {tuple(off[i] for i in its[1:]) for its, off in layouts.values()}
    for ax, (title, keys) in zip(axes.flat, TRAINING_PANELS, strict=True):
        drawn = False
        for v, (name, (its, offsets)) in enumerate(layouts.items()):
            for k, key in enumerate(keys):
                xy = _metric_series(runs[name], its, offsets, key)
                if xy is None:
                    continue
                style = {} if len(layouts) == 1 else {"color": f"C{v}", "ls": ("-", "--")[k % 2]}
                ax.plot(*xy, label=f"{name} {key}".strip(), **style)
                drawn = True
        for b in next(iter(bounds)) if len(bounds) == 1 else ():
            ax.axvline(b + 0.5, color="grey", ls=":", lw=0.8)
        ax.set(title=title, xlabel="optimizer step (all iterations)")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def win_rates(evaluation: dict | None) -> Figure | None:
    """Win rate (solid) and length-controlled win rate (dashed) per model, one colour per
    baseline kind, with bootstrap intervals."""
    comps = (evaluation or {}).get("comparisons") or []
    if not comps:
        return None
    fig, ax = _subplots((8, 4.5))
    kinds = sorted({c["kind"] for c in comps})
    for k, kind in enumerate(kinds):
        rows = sorted((c for c in comps if c["kind"] == kind), key=lambda c: c["iteration"])
        x = np.array([c["iteration"] for c in rows], dtype=float)
        color = f"C{k}"
        for j, (key, label, style) in enumerate((("win_rate", "WR", "o-"),
                                                 ("lc_win_rate", "LC WR", "s--"))):
            y = np.array([c[key] for c in rows])
            err = np.abs(np.array([c[f"{key}_ci"] for c in rows]).T - y)
            # a small offset so the two intervals of one model do not hide each other
            ax.errorbar(x + (2 * k + j - len(kinds) + 0.5) * 0.06, y, yerr=err, fmt=style,
                        color=color, mfc="white" if j else color, capsize=3,
                        label=f"{label} {kind.replace('_', ' ')}")
    its = sorted({c["iteration"] for c in comps})
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set(title="Win rate per iteration (bootstrap CI)", xlabel="model iteration",
           ylabel="win rate", ylim=(0, 1), xlim=(its[0] - 0.5, its[-1] + 0.5))
    ax.set_xticks(its)
    ax.legend(fontsize=8)
    return fig


def stage_times(stats: dict[int, dict]) -> Figure | None:
    """Wall time of each stage per iteration, stacked."""
    its = [i for i in sorted(stats) if _get(stats[i], "wall_seconds")]
    if not its:
        return None
    stages: list[str] = []
    for i in its:
        stages += [s for s in stats[i]["wall_seconds"] if s not in stages]
    stages.sort(key=stage_order)
    fig, ax = _subplots((8, 1.2 + 0.5 * len(its)))
    left = np.zeros(len(its))
    for stage in stages:
        widths = np.array([stats[i]["wall_seconds"].get(stage, 0.0) or 0.0 for i in its])
        ax.barh([f"iter {i}" for i in its], widths, left=left, label=stage)
        left += widths
    ax.set(title="Stage wall time", xlabel="seconds")
    ax.legend(fontsize=7, ncol=min(4, len(stages)), loc="upper center",
              bbox_to_anchor=(0.5, -0.35 if len(its) < 3 else -0.15))
    return fig
