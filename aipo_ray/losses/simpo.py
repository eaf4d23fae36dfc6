"""SimPO (Meng et al. 2024): reference-free, length-normalised, with a target margin γ."""

from __future__ import annotations

from torch import Tensor

from .base import PairLogps, PreferenceLoss, neg_logsigmoid
from .registry import register_loss


@register_loss("simpo")
class SimPOLoss(PreferenceLoss):
    """−log σ(β·log π_θ(y_w)/|y_w| − β·log π_θ(y_l)/|y_l| − γ)."""

    defaults = {"beta": 2.0, "gamma": 1.0}
    requires_reference = False
    needs_lengths = True

    def pair_loss(self, b: PairLogps) -> Tensor:
        chosen = b.policy_chosen / b.chosen_len
        rejected = b.policy_rejected / b.rejected_len
        return neg_logsigmoid(self.beta * (chosen - rejected) - self.gamma)
