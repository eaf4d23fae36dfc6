"""MIPO (papers/mipo.md): SimPO-style length-normalised margin, modulated by how strongly the
reference already prefers y_w: −log σ(β·(pc/nc − pr/nr) − β·log(1 + exp(rc/nc − rr/nr)))."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import PairLogps, PreferenceLoss, neg_logsigmoid
from .registry import register_loss


@register_loss("mipo")
class MIPOLoss(PreferenceLoss):
    defaults = {"beta": 25.0}
    needs_lengths = True

    def pair_loss(self, b: PairLogps) -> Tensor:
        policy_margin = b.policy_chosen / b.chosen_len - b.policy_rejected / b.rejected_len
        ref_margin = b.ref_chosen / b.chosen_len - b.ref_rejected / b.rejected_len
        # softplus(x) = log(1 + exp(x)), computed without overflow
        return neg_logsigmoid(self.beta * policy_margin - self.beta * F.softplus(ref_margin))
