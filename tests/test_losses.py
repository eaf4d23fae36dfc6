"""Every registered loss against its formula, computed here by hand with `math` on scalars.

The formulas are the contract of issue 3 (docs/losses.md), with s_θ = pc − pr, s_ref = rc − rr
and h = (pc − rc) − (pr − rr). Nothing here calls the code under test to get an expected value.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import pytest
import torch

from aipo_ray.losses import PairLogps, available_losses, build_loss, loss_defaults


class Pair(NamedTuple):
    pc: float
    pr: float
    rc: float
    rr: float
    nc: float
    nr: float


def nls(x: float) -> float:
    """−log σ(x) in plain math, stable on both sides."""
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def h(p: Pair) -> float:
    return (p.pc - p.rc) - (p.pr - p.rr)


def alpha_dpo(p: Pair, hp: dict) -> float:
    return nls(hp["beta"] * ((p.pc - p.pr) - (1 + hp["alpha"]) * (p.rc - p.rr)))


# name -> per-pair loss written straight from the table
HAND = {
    "dpo": lambda p, hp: nls(hp["beta"] * h(p)),
    "dpo_nll": lambda p, hp: nls(hp["beta"] * h(p)) - hp["nll_weight"] * p.pc / p.nc,
    "alpha_dpo": alpha_dpo,
    "aipo": lambda p, hp: alpha_dpo(p, hp) - hp["nll_weight"] * p.pc / p.nc,
    "simpo": lambda p, hp: nls(hp["beta"] * p.pc / p.nc - hp["beta"] * p.pr / p.nr - hp["gamma"]),
    "ipo": lambda p, hp: (h(p) - 1 / (2 * hp["beta"])) ** 2,
    "mipo": lambda p, hp: nls(
        hp["beta"] * (p.pc / p.nc - p.pr / p.nr)
        - hp["beta"] * math.log(1 + math.exp(p.rc / p.nc - p.rr / p.nr))
    ),
    "rdpo": lambda p, hp: nls(hp["beta"] * h(p) + hp["length_alpha"] * (p.nc - p.nr)),
    "hinge": lambda p, hp: max(0.0, 1 - hp["beta"] * h(p)),
    "sppo": lambda p, hp: (
        (p.pc - p.rc - 1 / (2 * hp["beta"])) ** 2 + (p.pr - p.rr + 1 / (2 * hp["beta"])) ** 2
    ),
}

# The table's defaults (paper values for AIPO), written out rather than read from the code.
SPEC_DEFAULTS = {
    "dpo": {"beta": 0.1},
    "dpo_nll": {"beta": 0.1, "nll_weight": 0.2},
    "alpha_dpo": {"beta": 0.1, "alpha": 0.05},
    "aipo": {"beta": 0.1, "alpha": 0.05, "nll_weight": 0.2},
    "simpo": {"beta": 2.0, "gamma": 1.0},
    "ipo": {"beta": 0.1},
    "mipo": {"beta": 25.0},
    "rdpo": {"beta": 0.1, "length_alpha": 0.0},
    "hinge": {"beta": 0.1},
    "sppo": {"beta": 0.1},
}

# Non-default values, so a term that the defaults switch off (length_alpha 0) is exercised too.
CUSTOM = {"beta": 0.37, "alpha": 0.3, "nll_weight": 0.7, "gamma": 0.4, "length_alpha": -0.02}
REFERENCE_FREE = {"simpo"}


def random_pairs(seed: int, n: int = 7) -> list[Pair]:
    """Realistic summed log-probs: lengths 3..80 tokens, -2.5..-0.1 nats per token."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        nc, nr = rng.randint(3, 80), rng.randint(3, 80)
        pc, pr = nc * rng.uniform(-2.5, -0.1), nr * rng.uniform(-2.5, -0.1)
        pairs.append(Pair(pc, pr, pc + rng.gauss(0, 6), pr + rng.gauss(0, 6), nc, nr))
    return pairs


def to_batch(pairs: list[Pair], dtype=torch.float64, requires_grad=False) -> PairLogps:
    def col(i: int, grad: bool) -> torch.Tensor:
        return torch.tensor([p[i] for p in pairs], dtype=dtype, requires_grad=grad)

    return PairLogps(
        policy_chosen=col(0, requires_grad),
        policy_rejected=col(1, requires_grad),
        ref_chosen=col(2, requires_grad),
        ref_rejected=col(3, requires_grad),
        chosen_len=torch.tensor([p.nc for p in pairs], dtype=torch.long),
        rejected_len=torch.tensor([p.nr for p in pairs], dtype=torch.long),
    )


def test_registry_holds_exactly_the_table():
    assert set(available_losses()) == set(HAND)
    assert available_losses() == sorted(available_losses())


@pytest.mark.parametrize("name", sorted(SPEC_DEFAULTS))
def test_defaults_are_the_table_values(name):
    assert loss_defaults(name) == SPEC_DEFAULTS[name]
    assert build_loss(name).hparams == SPEC_DEFAULTS[name]


@pytest.mark.parametrize("name", sorted(HAND))
def test_requires_reference_only_where_the_formula_reads_it(name):
    assert build_loss(name).requires_reference is (name not in REFERENCE_FREE)


@pytest.mark.parametrize("hparams", ["defaults", "custom"])
@pytest.mark.parametrize("name", sorted(HAND))
def test_loss_matches_hand_formula(name, hparams):
    hp = dict(SPEC_DEFAULTS[name])
    if hparams == "custom":
        hp = {k: CUSTOM[k] for k in hp}
    pairs = random_pairs(seed=len(name) * 31 + len(hparams))
    out = build_loss(name, **hp)(to_batch(pairs))
    assert out.losses.shape == (len(pairs),)
    assert out.losses.dtype == torch.float64
    expected = [HAND[name](p, hp) for p in pairs]
    for got, want in zip(out.losses.tolist(), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6, rel=1e-9)
    # the inputs must not saturate the loss into a constant, or the check would prove little
    assert max(expected) - min(expected) > 1e-3


def test_aipo_gradient_matches_hand_derivative():
    """∂L/∂pc = −β·σ(−z) − λ/nc and ∂L/∂pr = β·σ(−z), z = β(s_θ − (1+α)s_ref) (AIPO Eq. 7-10)."""
    p = Pair(pc=-40.0, pr=-55.0, rc=-42.0, rr=-50.0, nc=20, nr=25)
    beta, alpha, lam = 0.1, 0.05, 0.2
    batch = to_batch([p], requires_grad=True)
    build_loss("aipo", beta=beta, alpha=alpha, nll_weight=lam)(batch).losses.sum().backward()
    z = beta * ((p.pc - p.pr) - (1 + alpha) * (p.rc - p.rr))
    w = 1 / (1 + math.exp(z))  # σ(−z), the paper's gradient weight w_θ
    assert batch.policy_chosen.grad.item() == pytest.approx(-beta * w - lam / p.nc, abs=1e-12)
    assert batch.policy_rejected.grad.item() == pytest.approx(beta * w, abs=1e-12)


@pytest.mark.parametrize("name", sorted(HAND))
def test_gradcheck_float64(name):
    pairs = random_pairs(seed=7, n=4)
    if name == "hinge":  # keep every pair on the sloped side of the kink at β·h = 1
        pairs = [p._replace(rc=p.pc + 5.0, rr=p.pr - 5.0) for p in pairs]  # h = -10
    base = to_batch(pairs, requires_grad=True)
    loss = build_loss(name)

    def f(pc, pr, rc, rr):
        return loss(PairLogps(pc, pr, rc, rr, base.chosen_len, base.rejected_len)).losses

    inputs = (base.policy_chosen, base.policy_rejected, base.ref_chosen, base.ref_rejected)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_alpha_zero_makes_alpha_dpo_equal_dpo():
    batch = to_batch(random_pairs(seed=1))
    a = build_loss("alpha_dpo", beta=0.3, alpha=0.0)(batch).losses
    d = build_loss("dpo", beta=0.3)(batch).losses
    torch.testing.assert_close(a, d, rtol=0, atol=1e-12)


def test_zero_nll_weight_makes_aipo_equal_alpha_dpo():
    batch = to_batch(random_pairs(seed=2))
    a = build_loss("aipo", beta=0.1, alpha=0.05, nll_weight=0.0)(batch).losses
    b = build_loss("alpha_dpo", beta=0.1, alpha=0.05)(batch).losses
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_length_alpha_makes_rdpo_equal_dpo():
    batch = to_batch(random_pairs(seed=3))
    r = build_loss("rdpo", beta=0.2, length_alpha=0.0)(batch).losses
    d = build_loss("dpo", beta=0.2)(batch).losses
    torch.testing.assert_close(r, d, rtol=0, atol=0)


@pytest.mark.parametrize("beta", [0.01, 0.1, 3.0])
def test_dpo_at_zero_margin_is_ln2(beta):
    # h = 0 with policy != reference: both log-ratios shift by the same amount
    batch = to_batch([Pair(-10.0, -30.0, -12.0, -32.0, 5, 9), Pair(-3.0, -3.0, -3.0, -3.0, 2, 2)])
    out = build_loss("dpo", beta=beta)(batch).losses
    torch.testing.assert_close(out, torch.full((2,), math.log(2), dtype=torch.float64))


def extreme_pairs(h_value: float) -> list[Pair]:
    """|h| = 1e4 reached through the policy, and through the reference (which mipo softpluses)."""
    return [
        Pair(pc=-1.0, pr=-1.0 - h_value, rc=-1.0, rr=-1.0, nc=1, nr=1),
        Pair(pc=-1.0, pr=-1.0, rc=-1.0 - h_value, rr=-1.0, nc=1, nr=1),
    ]


@pytest.mark.parametrize("h_value", [1e4, -1e4])
@pytest.mark.parametrize("name", sorted(HAND))
def test_extreme_margin_gives_finite_loss_and_gradient_in_float32(name, h_value):
    batch = to_batch(extreme_pairs(h_value), dtype=torch.float32, requires_grad=True)
    out = build_loss(name)(batch)
    assert out.losses.dtype == torch.float32
    assert torch.isfinite(out.losses).all()
    out.losses.sum().backward()
    for grad in (batch.policy_chosen.grad, batch.policy_rejected.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert all(torch.isfinite(v).all() for v in out.metrics.values())


def test_dpo_far_on_the_wrong_side_is_linear_not_inf():
    """−log σ(β·h) → −β·h for h → −∞: a log(sigmoid) implementation would give inf here."""
    batch = to_batch(extreme_pairs(-1e4)[:1], dtype=torch.float32, requires_grad=True)
    out = build_loss("dpo", beta=0.1)(batch)
    assert out.losses.item() == pytest.approx(1000.0, rel=1e-6)
    out.losses.sum().backward()
    assert batch.policy_chosen.grad.item() == pytest.approx(-0.1, rel=1e-6)


def test_half_precision_inputs_are_computed_in_float32():
    batch = to_batch(random_pairs(seed=4), dtype=torch.bfloat16)
    assert build_loss("aipo")(batch).losses.dtype == torch.float32


# ---- errors -------------------------------------------------------------------------------


def test_unknown_loss_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown loss 'dpoo'") as err:
        build_loss("dpoo")
    for name in HAND:
        assert name in str(err.value)


def test_unknown_hparam_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match="gamma") as err:
        build_loss("aipo", gamma=1.0)
    assert "alpha, beta, nll_weight" in str(err.value)


@pytest.mark.parametrize("bad", ["0.1", True, float("nan"), float("inf")])
def test_non_numeric_or_non_finite_hparam_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="hparam beta must be a finite number"):
        build_loss("dpo", beta=bad)


@pytest.mark.parametrize("name", ["dpo", "ipo", "sppo", "simpo", "mipo", "hinge"])
@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_non_positive_beta_is_rejected(name, beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        build_loss(name, beta=beta)


@pytest.mark.parametrize("name", sorted(set(HAND) - REFERENCE_FREE))
def test_reference_needing_loss_without_reference_raises(name):
    batch = to_batch(random_pairs(seed=5))
    batch.ref_chosen = batch.ref_rejected = None
    with pytest.raises(ValueError, match="needs reference log-probs"):
        build_loss(name)(batch)


@pytest.mark.parametrize("name", ["simpo", "mipo", "rdpo", "aipo", "dpo_nll"])
def test_length_needing_loss_without_lengths_raises(name):
    batch = to_batch(random_pairs(seed=5))
    batch.chosen_len = batch.rejected_len = None
    with pytest.raises(ValueError, match="needs chosen_len and rejected_len"):
        build_loss(name)(batch)


def test_mismatched_shapes_are_named():
    batch = to_batch(random_pairs(seed=5, n=3))
    batch.ref_rejected = batch.ref_rejected[:2]
    with pytest.raises(ValueError, match=r"ref_rejected has shape \(2,\), expected \(3,\)"):
        build_loss("dpo")(batch)


# ---- reference-free -----------------------------------------------------------------------


def test_simpo_runs_without_reference_and_ignores_one_if_given():
    pairs = random_pairs(seed=6)
    with_ref = to_batch(pairs)
    no_ref = PairLogps(
        with_ref.policy_chosen,
        with_ref.policy_rejected,
        chosen_len=with_ref.chosen_len,
        rejected_len=with_ref.rejected_len,
    )
    loss = build_loss("simpo")
    a, b = loss(no_ref), loss(with_ref)
    expected = [HAND["simpo"](p, SPEC_DEFAULTS["simpo"]) for p in pairs]
    assert a.losses.tolist() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=0)
    assert "s_ref/mean" not in a.metrics
    # its rewards are its own implicit rewards β·logp/|y|, with or without a reference in the batch
    assert a.metrics["rewards/chosen"].item() == pytest.approx(b.metrics["rewards/chosen"].item())


# ---- metrics ------------------------------------------------------------------------------

METRIC_PAIRS = [
    Pair(pc=-10.0, pr=-20.0, rc=-12.0, rr=-18.0, nc=5, nr=10),  # h = 0, s_ref = 6
    Pair(pc=-30.0, pr=-15.0, rc=-25.0, rr=-16.0, nc=10, nr=5),  # h = -6, s_ref = -9
    Pair(pc=-8.0, pr=-40.0, rc=-9.0, rr=-30.0, nc=4, nr=20),  # h = 11, s_ref = 21
]


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def test_metrics_have_hand_values_for_a_reference_loss():
    beta = 0.5
    out = build_loss("aipo", beta=beta, alpha=0.05, nll_weight=0.2)(to_batch(METRIC_PAIRS))
    chosen = [beta * (p.pc - p.rc) for p in METRIC_PAIRS]  # 1, -2.5, 0.5
    rejected = [beta * (p.pr - p.rr) for p in METRIC_PAIRS]  # -1, 0.5, -5
    want = {
        "rewards/chosen": mean(chosen),
        "rewards/rejected": mean(rejected),
        "rewards/margins": mean(c - r for c, r in zip(chosen, rejected, strict=True)),
        "rewards/accuracies": 2 / 3,  # pairs 1 and 3 (pair 2 has margin -3)
        "logps/chosen": mean(p.pc for p in METRIC_PAIRS),
        "logps/rejected": mean(p.pr for p in METRIC_PAIRS),
        "s_ref/mean": mean(p.rc - p.rr for p in METRIC_PAIRS),  # (6 - 9 + 21) / 3
        "s_ref/agreement": 2 / 3,
        "nll": mean(-p.pc / p.nc for p in METRIC_PAIRS),  # (2 + 3 + 2) / 3
    }
    assert set(out.metrics) == set(want)
    for key, value in want.items():
        metric = out.metrics[key]
        assert metric.dim() == 0 and not metric.requires_grad, key
        assert metric.item() == pytest.approx(value, abs=1e-12), key


def test_metrics_of_a_reference_free_loss_use_length_normalised_rewards():
    beta = 2.0
    batch = to_batch(METRIC_PAIRS)
    batch.ref_chosen = batch.ref_rejected = None
    out = build_loss("simpo", beta=beta, gamma=1.0)(batch)
    chosen = [beta * p.pc / p.nc for p in METRIC_PAIRS]  # -4, -6, -4
    rejected = [beta * p.pr / p.nr for p in METRIC_PAIRS]  # -4, -6, -4
    assert out.metrics["rewards/chosen"].item() == pytest.approx(mean(chosen))
    assert out.metrics["rewards/rejected"].item() == pytest.approx(mean(rejected))
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.0, abs=1e-12)
    assert out.metrics["rewards/accuracies"].item() == 0.0  # ties are not wins
    assert "s_ref/mean" not in out.metrics and "s_ref/agreement" not in out.metrics


def test_metrics_are_detached_while_the_loss_keeps_its_graph():
    out = build_loss("dpo")(to_batch(METRIC_PAIRS, requires_grad=True))
    assert out.losses.requires_grad
    assert not any(v.requires_grad for v in out.metrics.values())


# ---- registry -----------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry for this test only, so a test loss never leaks into others."""
    from aipo_ray.losses import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


def test_a_loss_registered_by_decorator_is_built_by_name(scratch_registry):
    from aipo_ray.losses import PreferenceLoss, register_loss

    @register_loss("margin_mse")
    class MarginMSE(PreferenceLoss):
        defaults = {"beta": 0.1, "target": 1.0}

        def pair_loss(self, b):
            return (self.beta * (b.policy_chosen - b.policy_rejected) - self.target) ** 2

    assert "margin_mse" in available_losses()
    loss = build_loss("margin_mse", target=2.0)
    assert isinstance(loss, MarginMSE) and loss.name == "margin_mse"
    out = loss(to_batch(METRIC_PAIRS))
    want = [(0.1 * (p.pc - p.pr) - 2.0) ** 2 for p in METRIC_PAIRS]
    assert out.losses.tolist() == pytest.approx(want)
    with pytest.raises(ValueError, match="unknown hparam"):
        build_loss("margin_mse", alpha=1.0)


def test_a_required_hparam_left_unset_is_named(scratch_registry):
    from aipo_ray.losses import PreferenceLoss, register_loss

    @register_loss("needs_target")
    class NeedsTarget(PreferenceLoss):
        defaults = {"beta": 0.1, "target": None}  # None: no default, the user must set it

    with pytest.raises(ValueError, match=r"missing required hparam\(s\) target"):
        build_loss("needs_target")
    assert build_loss("needs_target", target=3).hparams == {"beta": 0.1, "target": 3.0}


def test_registering_a_taken_name_or_a_non_loss_fails(scratch_registry):
    from aipo_ray.losses import PreferenceLoss, register_loss

    with pytest.raises(ValueError, match="'dpo' is already registered"):

        @register_loss("dpo")
        class Other(PreferenceLoss):
            pass

    with pytest.raises(TypeError, match="PreferenceLoss subclass"):
        register_loss("fn")(lambda b: b)
