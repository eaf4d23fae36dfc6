"""Preference losses, registered by name.

    from aipo_ray.losses import PairLogps, build_loss, available_losses
    loss = build_loss("aipo", beta=0.1, alpha=0.05, nll_weight=0.2)
    out = loss(PairLogps(...))   # out.losses: [B]; out.metrics: dict of 0-d tensors
"""

# Importing the family modules registers their losses.
from . import aipo, dpo, ipo, mipo, simpo, sppo  # noqa: F401
from .base import LossOutput, PairLogps, PreferenceLoss
from .registry import available_losses, build_loss, loss_class, loss_defaults, register_loss

__all__ = [
    "LossOutput",
    "PairLogps",
    "PreferenceLoss",
    "available_losses",
    "build_loss",
    "loss_class",
    "loss_defaults",
    "register_loss",
]
