"""IPO (Azar et al. 2023): regress the log-ratio margin onto 1/(2β) instead of pushing it up."""

from __future__ import annotations

from torch import Tensor

from .base import PairLogps, PreferenceLoss, log_ratio_margin
from .registry import register_loss


@register_loss("ipo")
class IPOLoss(PreferenceLoss):
    """(h − 1/(2β))²."""

    defaults = {"beta": 0.1}

    def pair_loss(self, b: PairLogps) -> Tensor:
        return (log_ratio_margin(b) - 1.0 / (2.0 * self.beta)) ** 2
