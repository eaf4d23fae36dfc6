"""Figures of `aipo compare`: one series (colour) per variant. Each returns a Figure, or None when
no variant has the data yet. The training curves are the single-run report's, overlaid
(plots.overlaid_training_curves)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .plots import _subplots

# Rows of compare.json per variant: {name: [{"iteration": i, key: value, ...}, ...]}
Series = dict[str, list[dict]]

# (panel title, y label, [(compare.json key, legend suffix)]): two keys in a panel are drawn
# solid and dashed in the variant's colour.
LENGTH_PANELS = (
    ("All candidates (mean)", "tokens", [("mean_response_tokens", "")]),
    ("Chosen and rejected (mean)", "tokens", [("mean_chosen_tokens", "chosen"),
                                              ("mean_rejected_tokens", "rejected")]),
    ("Chosen − rejected (mean)", "tokens", [("mean_chosen_minus_rejected_tokens", "")]),
    ("Pairs trained on", "pairs", [("pairs", "")]),
)
REFERENCE_PANELS = (
    ("s_ref agreement P(s_ref > 0)", "share of pairs", [("sref_agreement", "")]),
    ("Chosen–rejected similarity", "similarity", [("chosen_rejected_similarity", "")]),
    ("Reference log-prob (summed)", "log π_ref", [("ref_chosen_logp", "chosen"),
                                                  ("ref_rejected_logp", "rejected")]),
    ("Reference log-prob (per token)", "log π_ref / token",
     [("ref_chosen_logp_per_token", "chosen"), ("ref_rejected_logp_per_token", "rejected")]),
)
WIN_RATE_PANELS = (
    ("Win rate vs θ_0", "win rate", [("win_rate_vs_base", "")]),
    ("Length-controlled win rate vs θ_0", "LC win rate", [("lc_win_rate_vs_base", "")]),
)


def _values(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in rows if r.get(key) is not None]
    return (np.array([r["iteration"] for r in rows], dtype=float),
            np.array([r[key] for r in rows], dtype=float))


def per_iteration(series: Series, panels, title: str) -> Figure | None:
    """One panel per (title, ylabel, keys) of `panels`, x = iteration, one colour per variant;
    a key with a `<key>_ci` interval gets error bars."""
    keys = [k for _, _, ks in panels for k, _ in ks]
    if not any(r.get(k) is not None for rows in series.values() for r in rows for k in keys):
        return None
    ncols = 2
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = _subplots((11, 3.6 * nrows), nrows, ncols)
    iterations = sorted({r["iteration"] for rows in series.values() for r in rows})
    for ax, (panel, ylabel, ks) in zip(np.ravel(axes), panels, strict=False):
        for v, (name, rows) in enumerate(series.items()):
            for k, (key, suffix) in enumerate(ks):
                x, y = _values(rows, key)
                if not len(x):
                    continue
                label = f"{name} {suffix}".strip()
                style = dict(color=f"C{v}", ls=("-", "--")[k % 2], marker="os"[k % 2],
                             mfc="white" if k else f"C{v}")
                ci = [r.get(f"{key}_ci") for r in rows if r.get(key) is not None]
                if all(c is not None for c in ci) and ci:
                    err = np.abs(np.array(ci, dtype=float).T - y)
                    ax.errorbar(x + 0.04 * (v - len(series) / 2), y, yerr=err, capsize=3,
                                label=label, **style)
                else:
                    ax.plot(x, y, label=label, **style)
        ax.set(title=panel, xlabel="iteration", ylabel=ylabel)
        ax.set_xticks(iterations)
        if ax.lines or ax.containers:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def win_rates(series: Series) -> Figure | None:
    fig = per_iteration(series, WIN_RATE_PANELS, "Each variant's θ_t against θ_0 (bootstrap CI)")
    for ax in np.ravel(fig.axes) if fig else ():
        ax.axhline(0.5, color="black", lw=0.8, ls=":")
        ax.set_ylim(-0.03, 1.03)
    return fig


def length_vs_lc_win_rate(series: Series) -> Figure | None:
    """Final LC win rate against the final model's mean answer length, one point per variant
    (paper Fig. 7: top left is best, short answers that still win)."""
    points = {}
    for name, rows in series.items():
        done = [r for r in rows if r.get("lc_win_rate_vs_base") is not None
                and r.get("eval_mean_tokens") is not None]
        if done:
            points[name] = done[-1]
    if not points:
        return None
    fig, ax = _subplots((7, 5))
    for v, (name, row) in enumerate(points.items()):
        ax.scatter(row["eval_mean_tokens"], row["lc_win_rate_vs_base"], s=60, color=f"C{v}",
                   label=f"{name} (θ_{row['iteration']})")
        ax.annotate(name, (row["eval_mean_tokens"], row["lc_win_rate_vs_base"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set(title="Final LC win rate vs θ_0 against answer length (paper Fig. 7)",
           xlabel="mean answer tokens on the held-out prompts", ylabel="LC win rate vs θ_0")
    ax.legend(fontsize=8)
    return fig
