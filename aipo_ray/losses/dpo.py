"""DPO (Rafailov et al. 2023) and its close relatives that only change the link on h.

h = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PairLogps, PreferenceLoss, log_ratio_margin, neg_logsigmoid
from .registry import register_loss


@register_loss("dpo")
class DPOLoss(PreferenceLoss):
    """−log σ(β·h). At h = 0 the loss is ln 2."""

    defaults = {"beta": 0.1}

    def pair_loss(self, b: PairLogps) -> Tensor:
        return neg_logsigmoid(self.beta * log_ratio_margin(b))


@register_loss("dpo_nll")
class DPONLLLoss(DPOLoss):
    """DPO + λ·NLL of the chosen response per token (Iterative RPO, Pang et al. 2024)."""

    defaults = {"beta": 0.1, "nll_weight": 0.2}


@register_loss("rdpo")
class RDPOLoss(PreferenceLoss):
    """−log σ(β·h + a·(|y_w| − |y_l|)), a = length_alpha (R-DPO, Park et al. 2024).

    A negative `length_alpha` lowers the margin when the chosen response is the longer one,
    which is the length regularisation of Park et al.; 0 gives back DPO.
    """

    defaults = {"beta": 0.1, "length_alpha": 0.0}
    needs_lengths = True

    def pair_loss(self, b: PairLogps) -> Tensor:
        length_term = self.length_alpha * (b.chosen_len - b.rejected_len)
        return neg_logsigmoid(self.beta * log_ratio_margin(b) + length_term)


@register_loss("hinge")
class HingeLoss(PreferenceLoss):
    """max(0, 1 − β·h) (SLiC, Zhao et al. 2023)."""

    defaults = {"beta": 0.1}

    def pair_loss(self, b: PairLogps) -> Tensor:
        return torch.relu(1.0 - self.beta * log_ratio_margin(b))
