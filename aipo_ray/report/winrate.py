"""Win rates of one model over another from a ranker's scores: raw, length-controlled, bootstrap CI.

- Each prompt is judged in both candidate orders (a ranker or judge may favour a position); an
  order gives 1 if the model's response scores higher, 0.5 on a tie, 0 otherwise, and the
  prompt's outcome is the mean of the two orders: 0, 0.25, 0.5, 0.75 or 1.
- The length-controlled win rate follows AlpacaEval 2 LC (Dubois et al. 2024, arXiv 2404.04475):
  a logistic regression of the outcome on tanh(Δlen / sd(Δlen)), reported at Δlen = 0, i.e.
  σ(intercept). It is the win rate the model would have if its responses were as long as the
  baseline's, which is what length exploitation inflates.
- Confidence intervals are percentile bootstraps over prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def order_outcomes(model_scores: np.ndarray, baseline_scores: np.ndarray) -> np.ndarray:
    """1 where the model's response scores higher, 0.5 on a tie, 0 where it scores lower."""
    a, b = np.asarray(model_scores, dtype=np.float64), np.asarray(baseline_scores, dtype=np.float64)
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def both_order_outcomes(scores_model_first: np.ndarray, scores_baseline_first: np.ndarray) -> np.ndarray:
    """Per-prompt outcome from two [B, 2] score arrays: candidates (model, baseline), then swapped."""
    first = np.asarray(scores_model_first, dtype=np.float64)
    second = np.asarray(scores_baseline_first, dtype=np.float64)
    if first.ndim != 2 or first.shape[1] != 2 or first.shape != second.shape:
        raise ValueError(f"expected two [B, 2] score arrays, got {first.shape} and {second.shape}")
    return 0.5 * (order_outcomes(first[:, 0], first[:, 1]) + order_outcomes(second[:, 1], second[:, 0]))


def win_rate(outcomes: np.ndarray) -> float:
    outcomes = np.asarray(outcomes, dtype=np.float64)
    if outcomes.size == 0:
        raise ValueError("win rate of zero prompts")
    return float(outcomes.mean())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 100,
                 tol: float = 1e-10) -> tuple[float, float]:
    """(intercept, slope) of P(y=1) = σ(θ0 + θ1·x) by Newton's method; y may be fractional.

    `l2` penalises the slope only, so a perfectly separable sample still gives a finite fit
    while the intercept stays unbiased (with x ≡ 0, σ(θ0) is exactly the mean of y).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    X = np.column_stack([np.ones_like(x), x])
    penalty = np.diag([1e-9, l2]) * len(y)
    theta = np.zeros(2)
    for _ in range(max_iter):
        p = _sigmoid(X @ theta)
        grad = X.T @ (p - y) + penalty @ theta
        w = np.maximum(p * (1 - p), 1e-12)
        hess = X.T @ (X * w[:, None]) + penalty
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return float(theta[0]), float(theta[1])


def length_feature(length_diff: np.ndarray) -> np.ndarray:
    """AlpacaEval's tanh(Δ / sd(Δ)); zero everywhere when the lengths never differ."""
    d = np.asarray(length_diff, dtype=np.float64)
    sd = d.std()
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def lc_win_rate(outcomes: np.ndarray, length_diff: np.ndarray, l2: float = 1e-4) -> float:
    """Length-controlled win rate: the fitted win probability at zero length difference."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    if outcomes.size == 0:
        raise ValueError("win rate of zero prompts")
    intercept, _ = fit_logistic(length_feature(length_diff), outcomes, l2=l2)
    return float(_sigmoid(np.array(intercept)))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, samples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over `n` prompts resampled with
    replacement; `statistic` receives the resampled indices."""
    if n == 0:
        raise ValueError("bootstrap of zero prompts")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(samples)])
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def compare(outcomes: np.ndarray, length_diff: np.ndarray, samples: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> dict:
    """Win rate and LC win rate, each with a bootstrap interval, and the win/tie/loss counts."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    length_diff = np.asarray(length_diff, dtype=np.float64)
    if outcomes.shape != length_diff.shape:
        raise ValueError(f"{outcomes.shape[0]} outcomes but {length_diff.shape[0]} length differences")
    return {
        "n": int(outcomes.size),
        "wins": int((outcomes > 0.5).sum()), "ties": int((outcomes == 0.5).sum()),
        "losses": int((outcomes < 0.5).sum()),
        "win_rate": win_rate(outcomes),
        "win_rate_ci": list(bootstrap_ci(lambda i: outcomes[i].mean(), outcomes.size, samples,
                                         confidence, seed)),
        "lc_win_rate": lc_win_rate(outcomes, length_diff),
        "lc_win_rate_ci": list(bootstrap_ci(lambda i: lc_win_rate(outcomes[i], length_diff[i]),
                                            outcomes.size, samples, confidence, seed)),
        "mean_length_diff": float(length_diff.mean()),
        "confidence": confidence,
    }


def format_comparison(c: dict) -> str:
    """One line of an eval comparison: who beat whom, how often, with intervals and length."""
    lo, hi = c["win_rate_ci"]
    lc_lo, lc_hi = c["lc_win_rate_ci"]
    return (f"{c['model']} vs {c['baseline']}: win rate {c['win_rate']:.2f} [{lo:.2f}, {hi:.2f}], "
            f"LC {c['lc_win_rate']:.2f} [{lc_lo:.2f}, {lc_hi:.2f}]; "
            f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses of {c['n']}; "
            f"length {c['mean_length_diff']:+.1f} tokens")
