"""What every preference loss shares: the batch it reads, what it returns, and its metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class PairLogps:
    """Summed response log-probs of a batch of B preference pairs.

    Args:
        policy_chosen: [B] log π_θ(y_w|x), summed over response tokens.
        policy_rejected: [B] log π_θ(y_l|x).
        ref_chosen: [B] log π_ref(y_w|x), or None for reference-free losses.
        ref_rejected: [B] log π_ref(y_l|x), or None.
        chosen_len: [B] number of response tokens of y_w (|y_w|).
        rejected_len: [B] number of response tokens of y_l.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None


@dataclass
class LossOutput:
    """`losses`: [B] per-pair loss (mean it for the batch loss); `metrics`: detached 0-d tensors."""

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 at least; float64 stays float64 (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


class PreferenceLoss(nn.Module):
    """Base of every registered loss.

    A subclass sets `defaults` (hparam name -> default, None for required), `requires_reference`,
    `needs_lengths`, and implements `pair_loss`. A loss whose defaults include `nll_weight` gets
    the NLL regulariser −λ·log π_θ(y_w|x)/|y_w| added (Pang et al. 2024; AIPO Eq. 10).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float | None]] = {}
    requires_reference: ClassVar[bool] = True
    needs_lengths: ClassVar[bool] = False

    def __init__(self, **hparams: float):
        super().__init__()
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"loss {self.name!r} got unknown hparam(s) {', '.join(unknown)}; "
                f"its hparams: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        resolved = {**self.defaults, **hparams}
        missing = sorted(k for k, v in resolved.items() if v is None)
        if missing:
            raise ValueError(f"loss {self.name!r} is missing required hparam(s) {', '.join(missing)}")
        for key, value in resolved.items():
            # Real admits numpy scalars; a NaN or inf hparam would silently poison every loss value.
            if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(
                    f"loss {self.name!r}: hparam {key} must be a finite number, got {value!r}"
                )
        self.hparams: dict[str, float] = {k: float(v) for k, v in resolved.items()}
        self._check_hparams()

    def _check_hparams(self) -> None:
        """Range checks; subclasses extend. `beta` must be positive wherever it exists."""
        if "beta" in self.hparams and self.hparams["beta"] <= 0:
            raise ValueError(f"loss {self.name!r}: beta must be > 0, got {self.hparams['beta']}")

    def __getattr__(self, key: str):
        hparams = self.__dict__.get("hparams")
        if hparams is not None and key in hparams:
            return hparams[key]
        return super().__getattr__(key)

    def pair_loss(self, b: PairLogps) -> Tensor:
        """[B] loss of each pair, without the NLL term."""
        raise NotImplementedError

    def forward(self, batch: PairLogps) -> LossOutput:
        b = self._validated(batch)
        losses = self.pair_loss(b)
        nll = -b.policy_chosen / b.chosen_len if b.chosen_len is not None else None
        if "nll_weight" in self.hparams:
            losses = losses + self.hparams["nll_weight"] * nll
        return LossOutput(losses=losses, metrics=self._metrics(b, nll))

    def _validated(self, batch: PairLogps) -> PairLogps:
        if self.requires_reference and not batch.has_reference:
            raise ValueError(
                f"loss {self.name!r} needs reference log-probs (ref_chosen, ref_rejected); got None"
            )
        needs_len = self.needs_lengths or "nll_weight" in self.hparams
        if needs_len and (batch.chosen_len is None or batch.rejected_len is None):
            raise ValueError(f"loss {self.name!r} needs chosen_len and rejected_len; got None")
        dtype = compute_dtype(batch.policy_chosen)
        shape = batch.policy_chosen.shape

        def cast(name: str, x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            if x.shape != shape:
                raise ValueError(f"PairLogps.{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
            return x.to(dtype)

        return PairLogps(
            **{n: cast(n, getattr(batch, n)) for n in PairLogps.__dataclass_fields__}
        )

    def _metrics(self, b: PairLogps, nll: Tensor | None) -> dict[str, Tensor]:
        beta = self.hparams.get("beta", 1.0)
        with torch.no_grad():
            # The reward is the loss's own implicit reward, whether or not the batch happens to
            # carry reference log-probs: SimPO's stays β·logp/|y| even when the pipeline scored refs.
            if self.requires_reference:
                chosen = beta * (b.policy_chosen - b.ref_chosen)
                rejected = beta * (b.policy_rejected - b.ref_rejected)
            else:  # reference-free: the implicit reward is the length-normalised log-prob
                chosen = beta * b.policy_chosen / b.chosen_len
                rejected = beta * b.policy_rejected / b.rejected_len
            m = {
                "rewards/chosen": chosen.mean(),
                "rewards/rejected": rejected.mean(),
                "rewards/margins": (chosen - rejected).mean(),
                "rewards/accuracies": (chosen > rejected).to(chosen.dtype).mean(),
                "logps/chosen": b.policy_chosen.mean(),
                "logps/rejected": b.policy_rejected.mean(),
            }
            if b.has_reference:
                s_ref = b.ref_chosen - b.ref_rejected
                m["s_ref/mean"] = s_ref.mean()
                m["s_ref/agreement"] = (s_ref > 0).to(s_ref.dtype).mean()
            if nll is not None:
                m["nll"] = nll.mean()
        return {k: v.detach() for k, v in m.items()}


def log_ratio_margin(b: PairLogps) -> Tensor:
    """h = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))."""
    return (b.policy_chosen - b.ref_chosen) - (b.policy_rejected - b.ref_rejected)


def neg_logsigmoid(x: Tensor) -> Tensor:
    """−log σ(x) computed stably (softplus(−x)); finite for |x| = 1e4."""
    return F.softplus(-x)
