"""Summed response log-probs without fp32 logits of the whole vocabulary for the whole batch.

The decoder runs once over the concatenated chosen+rejected batch; then only the hidden states
of response positions go through `lm_head` + log-softmax, `chunk_size` tokens at a time. Under
autograd each chunk is recomputed in backward (activation checkpointing), so at most one chunk's
[chunk_size, vocab] fp32 logits exist at any moment, forward or backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .batching import PairBatch


def _token_logps(lm_head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = lm_head(hidden).float()
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def gather_response_logps(
    hidden: Tensor, input_ids: Tensor, response_mask: Tensor, lm_head: nn.Module, chunk_size: int,
    sequence_ids: Tensor | None = None, num_sequences: int | None = None,
) -> Tensor:
    """[S] sum over each sequence's response tokens of log p(token | prefix).

    Args:
        hidden: [N, L, H] final hidden states (after the last norm).
        input_ids: [N, L] token ids.
        response_mask: [N, L] 1 on response tokens.
        lm_head: the output projection.
        chunk_size: response tokens per lm_head/log-softmax call.
        sequence_ids: [N, L] the sequence each position belongs to (packed rows hold several);
            None: sequence i is row i and S = N.
        num_sequences: S when `sequence_ids` is given.
    """
    # Position t predicts token t+1; response tokens never sit at position 0 of their sequence
    # (a prompt precedes), so t is always in the sequence of t+1.
    mask = response_mask[:, 1:].bool()
    rows, cols = mask.nonzero(as_tuple=True)
    selected = hidden[:, :-1][rows, cols]  # [T, H]
    targets = input_ids[:, 1:][rows, cols]  # [T]
    pieces = []
    for start in range(0, selected.shape[0], chunk_size):
        h, t = selected[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_token_logps, lm_head, h, t, use_reentrant=False))
        else:
            pieces.append(_token_logps(lm_head, h, t))
    token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    if sequence_ids is None:
        owner, size = rows, hidden.shape[0]
    else:
        owner, size = sequence_ids[:, 1:][rows, cols], num_sequences
    out = torch.zeros(size, dtype=torch.float32, device=hidden.device)
    return out.index_add(0, owner, token_logps)


def full_vocab_response_logps(logits: Tensor, input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """The textbook computation from full [N, L, V] logits; the reference the chunked one must equal."""
    logps = logits[:, :-1].float().log_softmax(-1)
    token = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token * response_mask[:, 1:].to(token.dtype)).sum(-1)


class SequenceLogps(nn.Module):
    """A causal LM whose forward returns summed response log-probs of a `PairBatch`.

    FSDP2 shards the decoder layers and then this module as the root, so one root forward
    unshards the embeddings, final norm and `lm_head` that the chunked gather uses.
    """

    def __init__(self, causal_lm: nn.Module, chunk_size: int):
        super().__init__()
        self.causal_lm = causal_lm
        self.chunk_size = chunk_size

    @property
    def decoder(self) -> nn.Module:
        return self.causal_lm.get_decoder()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                position_ids: Tensor | None = None, sequence_ids: Tensor | None = None,
                num_sequences: int | None = None) -> Tensor:
        # Packed rows: no attention mask, so transformers derives the block-diagonal causal mask
        # from the position ids restarting at 0 (its padding-free path).
        hidden = self.decoder(input_ids=input_ids, position_ids=position_ids,
                              attention_mask=None if position_ids is not None else attention_mask,
                              use_cache=False).last_hidden_state
        lm_head = self.causal_lm.get_output_embeddings()
        return gather_response_logps(hidden, input_ids, response_mask, lm_head, self.chunk_size,
                                     sequence_ids, num_sequences)

    def pair_logps(self, batch: PairBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(chosen_logps [B], rejected_logps [B], chosen_len [B], rejected_len [B]) in one forward."""
        logps = self(batch.input_ids, batch.attention_mask, batch.response_mask,
                     batch.position_ids, batch.sequence_ids, batch.num_sequences)
        lengths = batch.response_lengths()
        b = batch.num_pairs
        return logps[:b], logps[b:], lengths[:b], lengths[b:]
