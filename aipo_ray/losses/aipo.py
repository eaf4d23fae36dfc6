"""α-DPO and AIPO (AIPO paper, arXiv 2409.08845, Eq. 6 and Eq. 10).

s_θ = log π_θ(y_w) − log π_θ(y_l), s_ref the same under the reference. α·s_ref acts as a
dynamic target margin: larger when the reference already agrees with the ranker.
"""

from __future__ import annotations

from torch import Tensor

from .base import PairLogps, PreferenceLoss, neg_logsigmoid
from .registry import register_loss


@register_loss("alpha_dpo")
class AlphaDPOLoss(PreferenceLoss):
    """−log σ(β·(s_θ − (1+α)·s_ref)) (Eq. 6). α = 0 is DPO.

    The paper searches α ∈ {0.02, 0.03, 0.04, 0.05} for α-DPO (Tab. 6) without naming its pick;
    0.05 is a point of that grid, not a value the paper states.
    """

    defaults = {"beta": 0.1, "alpha": 0.05}

    def pair_loss(self, b: PairLogps) -> Tensor:
        s_theta = b.policy_chosen - b.policy_rejected
        s_ref = b.ref_chosen - b.ref_rejected
        return neg_logsigmoid(self.beta * (s_theta - (1.0 + self.alpha) * s_ref))


@register_loss("aipo")
class AIPOLoss(AlphaDPOLoss):
    """α-DPO − λ·log π_θ(y_w|x)/|y_w| (Eq. 10).

    β 0.1 is the paper's; α 0.05 and λ 0.2 are one point of its search (Tab. 6: α ∈ {0.03, 0.05,
    0.07}, λ ∈ {0.2, 0.5}), whose winner it does not state (a summary of it suggests α 0.03,
    λ 0.2). pipelines/experiments/aipo_hparams.yaml runs the grid.
    """

    defaults = {"beta": 0.1, "alpha": 0.05, "nll_weight": 0.2}
