"""Ray Train + FSDP2 preference training: batching, chunked log-probs, the trainer loop."""

from .batching import EncodedPair, PairBatch, PairEncoder, collate_pairs
from .logps import SequenceLogps, gather_response_logps

__all__ = [
    "EncodedPair", "PairBatch", "PairEncoder", "SequenceLogps", "collate_pairs",
    "gather_response_logps",
]
