"""Which pairs each worker trains on at each optimizer step: deterministic, resumable, no drops.

Global batch G = micro_batch × grad_accum × workers (grad_accum = ⌈G / (micro × workers)⌉).
Each epoch is a seeded permutation of the pairs cut into ⌈N / G⌉ steps; the last step of an
epoch may hold fewer than G pairs. Step pairs are dealt round-robin to workers. Every worker
runs the same number of micro-batches every step (FSDP2's collectives need that), so slots
without a real pair repeat one with weight 0. The loss is a sum over real pairs scaled by
workers / (real pairs in the step), which makes the averaged gradient exactly the mean over the
step's pairs, however partial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import torch

from aipo_ray.storage.schemas import PAIRS, REF_LOGPS, conform


def join_reference(pairs: pa.Table, ref_logps: pa.Table | None) -> pa.Table:
    """Pairs with their reference log-probs (joined on prompt_id), in the pairs' order.

    Raises ValueError naming a prompt_id of `pairs` that has no reference row.
    """
    pairs = conform(pairs, PAIRS, "pairs").select(PAIRS.names)
    if ref_logps is None:
        return pairs
    ref = conform(ref_logps, REF_LOGPS, "ref_logps")
    lookup = {pid: i for i, pid in enumerate(ref.column("prompt_id").to_pylist())}
    try:
        order = [lookup[pid] for pid in pairs.column("prompt_id").to_pylist()]
    except KeyError as e:
        raise ValueError(
            f"ref_logps has no row for prompt_id {e.args[0]!r} of pairs; re-run the ref_logps stage"
        ) from None
    taken = ref.take(pa.array(order, type=pa.int64()))
    for name in ("ref_chosen_logp", "ref_rejected_logp"):
        pairs = pairs.append_column(name, taken.column(name))
    return pairs


@dataclass(frozen=True)
class BatchPlan:
    num_pairs: int
    global_batch_size: int
    micro_batch_size: int
    num_workers: int
    num_epochs: int
    seed: int

    def __post_init__(self):
        if self.num_pairs < 1:
            raise ValueError("no pairs to train on")

    @property
    def grad_accum(self) -> int:
        return math.ceil(self.global_batch_size / (self.micro_batch_size * self.num_workers))

    @property
    def effective_global_batch(self) -> int:
        """Pairs per full step: G, unless there are fewer pairs than G."""
        return min(self.global_batch_size, self.num_pairs)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_pairs / self.global_batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.num_epochs

    @property
    def last_step_pairs(self) -> int:
        """Pairs in the last step of an epoch (== G when N divides evenly)."""
        return self.num_pairs - (self.steps_per_epoch - 1) * self.global_batch_size

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_pairs, generator=g).tolist()

    def step_indices(self, global_step: int) -> list[int]:
        """Pair indices of optimizer step `global_step` (0-based, counting across epochs)."""
        epoch, step = divmod(global_step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        return order[step * self.global_batch_size:(step + 1) * self.global_batch_size]

    def worker_micro_batches(self, global_step: int, rank: int) -> list[list[tuple[int, float]]]:
        """grad_accum micro-batches of (pair index, weight) for `rank`; weight 0 marks padding."""
        indices = self.step_indices(global_step)
        mine = indices[rank::self.num_workers]
        slots = self.micro_batch_size * self.grad_accum
        filler = mine[0] if mine else indices[0]
        weighted = [(i, 1.0) for i in mine] + [(filler, 0.0)] * (slots - len(mine))
        m = self.micro_batch_size
        return [weighted[k:k + m] for k in range(0, slots, m)]

    def describe(self) -> str:
        partial = self.last_step_pairs != self.effective_global_batch
        tail = (f"; the last step of each epoch has {self.last_step_pairs} pairs (loss scaled by "
                "the real pair count, padded slots weigh 0)") if partial else ""
        return (f"{self.num_pairs} pairs, global batch {self.global_batch_size} = micro "
                f"{self.micro_batch_size} × grad_accum {self.grad_accum} × workers "
                f"{self.num_workers}, {self.steps_per_epoch} steps/epoch × {self.num_epochs} "
                f"epochs = {self.total_steps} steps{tail}")
