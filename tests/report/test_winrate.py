"""Win-rate statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aipo_ray.report.winrate import (
    bootstrap_ci,
    both_order_outcomes,
    compare,
    fit_logistic,
    lc_win_rate,
    win_rate,
)


def test_both_orders_average_position_bias_away():
    # prompt 0: model wins in both orders; 1: wins only when shown first (position bias);
    # 2: tie in one order, loss in the other; 3: loses both.
    first = np.array([[2.0, 1.0], [2.0, 1.0], [1.0, 1.0], [0.0, 1.0]])  # (model, baseline)
    second = np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 1.0], [1.0, 0.0]])  # (baseline, model)
    assert both_order_outcomes(first, second).tolist() == [1.0, 0.5, 0.25, 0.0]
    assert win_rate([1.0, 0.5, 0.25, 0.0]) == pytest.approx(0.4375)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        both_order_outcomes(np.zeros((3, 3)), np.zeros((3, 3)))


def test_lc_win_rate_equals_win_rate_when_lengths_never_differ():
    outcomes = np.array([1, 1, 0, 1, 0.5, 0, 1])
    assert lc_win_rate(outcomes, np.zeros(7)) == pytest.approx(outcomes.mean(), abs=1e-9)


def test_lc_win_rate_removes_a_pure_length_effect():
    # Longer responses (Δ=+30) win 6 of 8, shorter ones (Δ=-30) win 1 of 4. Two groups with
    # features ±c: the fit is saturated, σ(θ0 ± θ1c) = 3/4 and 1/4, so θ0 = 0 and LC = 1/2,
    # while the raw win rate, 7/12, is inflated by the model answering longer more often.
    outcomes = np.array([1] * 6 + [0] * 2 + [1] * 1 + [0] * 3, dtype=float)
    diff = np.array([30.0] * 8 + [-30.0] * 4)
    assert win_rate(outcomes) == pytest.approx(7 / 12)
    assert lc_win_rate(outcomes, diff, l2=0.0) == pytest.approx(0.5, abs=1e-9)


def test_lc_win_rate_hand_computed_from_two_groups():
    # σ(θ0 + θ1c) = 3/4, σ(θ0 − θ1c) = 1/2  ⇒  θ0 = (ln 3 + 0) / 2  ⇒  LC = √3 / (1 + √3)
    outcomes = np.array([1, 1, 1, 0, 1, 1, 0, 0], dtype=float)
    diff = np.array([5.0] * 4 + [-5.0] * 4)
    expected = math.sqrt(3) / (1 + math.sqrt(3))
    assert lc_win_rate(outcomes, diff, l2=0.0) == pytest.approx(expected, abs=1e-9)


def test_logistic_fit_stays_finite_when_separable():
    x = np.array([-1.0, -0.5, 0.5, 1.0])
    intercept, slope = fit_logistic(x, np.array([0.0, 0.0, 1.0, 1.0]))
    assert math.isfinite(intercept) and math.isfinite(slope) and slope > 0
    assert abs(intercept) < 1e-6  # symmetric data: the fit is centred


def test_bootstrap_interval_of_a_constant_is_that_constant():
    outcomes = np.ones(20)
    assert bootstrap_ci(lambda i: outcomes[i].mean(), 20, samples=50) == (1.0, 1.0)


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    outcomes = (rng.random(400) < 0.6).astype(float)
    lo, hi = bootstrap_ci(lambda i: outcomes[i].mean(), 400, samples=2000, seed=3)
    p = outcomes.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 400)
    assert lo < p < hi
    assert (hi - lo) == pytest.approx(2 * half, rel=0.15)


def test_compare_reports_counts_rates_and_intervals():
    outcomes = np.array([1, 1, 0.5, 0, 1, 0.75, 0.25, 1], dtype=float)
    diff = np.array([3, -2, 0, 5, 1, -1, 2, 4], dtype=float)
    r = compare(outcomes, diff, samples=200, seed=0)
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (8, 5, 1, 2)
    assert r["win_rate"] == pytest.approx(outcomes.mean())
    assert r["win_rate_ci"][0] <= r["win_rate"] <= r["win_rate_ci"][1]
    assert r["lc_win_rate_ci"][0] <= r["lc_win_rate"] <= r["lc_win_rate_ci"][1]
    assert r["mean_length_diff"] == pytest.approx(1.5)
    assert compare(outcomes, diff, samples=200, seed=0) == r  # seeded: reproducible
