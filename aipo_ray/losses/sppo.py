"""SPPO (Wu et al. 2024) with hard win/loss labels: push the chosen log-ratio to +1/(2β) and
the rejected one to −1/(2β)."""

from __future__ import annotations

from torch import Tensor

from .base import PairLogps, PreferenceLoss
from .registry import register_loss


@register_loss("sppo")
class SPPOLoss(PreferenceLoss):
    """(log π_θ(y_w)/π_ref(y_w) − 1/(2β))² + (log π_θ(y_l)/π_ref(y_l) + 1/(2β))²."""

    defaults = {"beta": 0.1}

    def pair_loss(self, b: PairLogps) -> Tensor:
        target = 1.0 / (2.0 * self.beta)
        chosen = b.policy_chosen - b.ref_chosen
        rejected = b.policy_rejected - b.ref_rejected
        return (chosen - target) ** 2 + (rejected + target) ** 2
