"""PairRM's input format, as llm-blender builds it, made independent of batch composition.

One comparison of candidates A and B for a source is the token sequence

    [CLS] <|source|> source… [SEP] [CLS] <|candidate1|> A… [SEP] [CLS] <|candidate2|> B… [SEP]

The source is cut to `source_max_length` (1224) tokens, special tokens included. Each candidate is
cut to `candidate_max_length + (source_max_length − L) // 2` tokens, where L is the source's
length: a short source leaves room for longer candidates. llm-blender takes L as the longest
source *in the collated batch*, so its scores change with batch size; here L is each example's
own length, which equals llm-blender's output at batch size 1 for every row.

The text "[SEP]" inside a source or candidate is replaced by a space, as llm-blender does, since
its model locates segments by their separator. The prefix strings themselves are replaced by a
space too: llm-blender would find two prefix tokens in such a row and fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SOURCE_PREFIX = "<|source|>"
CANDIDATE1_PREFIX = "<|candidate1|>"
CANDIDATE2_PREFIX = "<|candidate2|>"
CANDIDATE_PREFIX = "<|candidate|>"
# llm-blender adds the prefixes to the tokenizer in this order; the ids follow it.
PREFIX_TOKENS = (SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX, CANDIDATE_PREFIX)


@dataclass(frozen=True)
class PrefixIds:
    """Token ids of the four prefixes (PairRM-hf's config names them this way)."""

    source_prefix_id: int
    cand1_prefix_id: int
    cand2_prefix_id: int
    cand_prefix_id: int


@dataclass(frozen=True)
class PairBatch:
    """Right-padded comparisons plus where each one's three prefix tokens sit."""

    input_ids: torch.Tensor  # [K, T]
    attention_mask: torch.Tensor  # [K, T]
    source_pos: torch.Tensor  # [K]
    cand1_pos: torch.Tensor  # [K]
    cand2_pos: torch.Tensor  # [K]

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(**{name: t.to(device) for name, t in self.__dict__.items()})


class PairEncoder:
    """Tokenizes (source, candidate A, candidate B) triples into PairRM sequences.

    Each source and each (candidate, budget) is tokenized once per call, however many
    comparisons it takes part in: a full N×N matrix reuses every candidate 2(N−1) times.
    """

    def __init__(
        self,
        tokenizer,
        prefix_ids: PrefixIds,
        source_max_length: int = 1224,
        candidate_max_length: int = 412,
    ):
        self.tokenizer = tokenizer
        self.ids = prefix_ids
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self.sep_token = tokenizer.sep_token
        if self.sep_token is None or tokenizer.pad_token_id is None:
            raise ValueError("PairRM needs a tokenizer with a sep and a pad token (DeBERTa-v3's)")

    def clean(self, text: str) -> str:
        text = text.replace(self.sep_token, " ")
        for prefix in PREFIX_TOKENS:
            text = text.replace(prefix, " ")
        return text

    def _encode(self, text: str, max_length: int) -> list[int]:
        return self.tokenizer(text, max_length=max_length, truncation=True)["input_ids"]

    def encode_source(self, source: str) -> list[int]:
        return self._encode(SOURCE_PREFIX + self.clean(source), self.source_max_length)

    def candidate_budget(self, source_len: int) -> int:
        return self.candidate_max_length + (self.source_max_length - source_len) // 2

    def encode_candidate(self, candidate: str, budget: int) -> list[int]:
        """Tokens of `<|candidate|>` + text; the caller swaps the prefix for candidate 1 or 2."""
        return self._encode(CANDIDATE_PREFIX + self.clean(candidate), budget)

    def encode_pairs(
        self, sources: list[str], lefts: list[str], rights: list[str]
    ) -> list[tuple[list[int], int, int]]:
        """One (ids, cand1 position, cand2 position) per comparison; the source prefix is at 1."""
        if not len(sources) == len(lefts) == len(rights):
            raise ValueError(
                f"sources, lefts and rights differ in length: {len(sources)}, {len(lefts)}, {len(rights)}"
            )
        source_cache: dict[str, list[int]] = {}
        cand_cache: dict[tuple[str, int], list[int]] = {}
        out = []
        for source, left, right in zip(sources, lefts, rights, strict=True):
            if source not in source_cache:
                source_cache[source] = self.encode_source(source)
            src = source_cache[source]
            budget = self.candidate_budget(len(src))
            cands = []
            for text in (left, right):
                if (text, budget) not in cand_cache:
                    cand_cache[(text, budget)] = self.encode_candidate(text, budget)
                cands.append(cand_cache[(text, budget)])
            c1 = self._swap_prefix(cands[0], self.ids.cand1_prefix_id)
            c2 = self._swap_prefix(cands[1], self.ids.cand2_prefix_id)
            out.append((src + c1 + c2, len(src) + c1.index(self.ids.cand1_prefix_id),
                        len(src) + len(c1) + c2.index(self.ids.cand2_prefix_id)))
        return out

    def _swap_prefix(self, ids: list[int], new_id: int) -> list[int]:
        return [new_id if t == self.ids.cand_prefix_id else t for t in ids]

    def collate(self, encoded: list[tuple[list[int], int, int]]) -> PairBatch:
        """Right-pad to the longest sequence; padding is masked, so rows do not see each other."""
        width = max(len(ids) for ids, _, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        src_pos = [ids.index(self.ids.source_prefix_id) for ids, _, _ in encoded]
        return PairBatch(
            input_ids=input_ids,
            attention_mask=mask,
            source_pos=torch.tensor(src_pos, dtype=torch.long),
            cand1_pos=torch.tensor([p for _, p, _ in encoded], dtype=torch.long),
            cand2_pos=torch.tensor([p for _, _, p in encoded], dtype=torch.long),
        )
