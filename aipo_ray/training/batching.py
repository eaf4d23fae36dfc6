"""Preference pairs as token tensors: chat template, truncation, one concatenated batch.

The same code tokenises pairs for the reference pass and for training, so the reference
log-probs and the policy log-probs of a pair are sums over exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class EncodedPair:
    """Token ids of one pair: the templated prompt (shared) and each templated response."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    prompt_truncated: bool = False
    chosen_truncated: bool = False
    rejected_truncated: bool = False

    @property
    def truncated_responses(self) -> int:
        return int(self.chosen_truncated) + int(self.rejected_truncated)


@dataclass
class PairBatch:
    """B pairs as 2B sequences: sequences 0..B-1 are chosen, B..2B-1 rejected.

    Padded (default): 2B right-padded rows, sequence i in row i. Packed (`pack_pairs`): one row
    holding the 2B sequences back to back with no padding; `position_ids` restart at 0 for each
    sequence, which is what tells transformers' attention to keep the sequences apart.
    `sequence_ids` names each position's sequence in both layouts.

    `response_mask` is 1 on response tokens only; prompt and padding positions are 0. It is
    built from lengths, never from token ids (SmolLM2's pad token is its EOS token).
    """

    input_ids: Tensor  # [rows, L] long
    attention_mask: Tensor  # [rows, L] long (all ones when packed)
    response_mask: Tensor  # [rows, L] long
    truncated_prompts: int
    truncated_responses: int
    sequence_ids: Tensor | None = None  # [rows, L] long; None: sequence i is row i
    position_ids: Tensor | None = None  # [rows, L] long; set only when packed

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    @property
    def num_sequences(self) -> int:
        if self.sequence_ids is None:
            return self.input_ids.shape[0]
        return int(self.sequence_ids.max()) + 1

    @property
    def num_pairs(self) -> int:
        return self.num_sequences // 2

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def response_lengths(self) -> Tensor:
        """[2B] response tokens of each sequence."""
        if self.sequence_ids is None:
            return self.response_mask.sum(-1)
        out = torch.zeros(self.num_sequences, dtype=torch.long, device=self.input_ids.device)
        return out.index_add(0, self.sequence_ids.flatten(), self.response_mask.flatten())

    def to(self, device: torch.device | str) -> PairBatch:
        def move(t):
            return None if t is None else t.to(device)

        return PairBatch(self.input_ids.to(device), self.attention_mask.to(device),
                         self.response_mask.to(device), self.truncated_prompts,
                         self.truncated_responses, move(self.sequence_ids),
                         move(self.position_ids))


class PairEncoder:
    """Applies the chat template (user turn = prompt, assistant turn = response) and truncates.

    The response tokens are the tokens of the templated conversation after the templated prompt
    with its generation prefix (`add_generation_prompt=True`), so they include the template's
    end-of-turn tokens: the model is trained to stop. Prompts are truncated from the left (the
    question's end stays next to the answer), responses from the right.
    """

    def __init__(self, tokenizer, max_prompt_length: int, max_response_length: int,
                 chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.max_response_length = max_response_length
        self.chat_template = chat_template

    def _template(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt,
            chat_template=self.chat_template,
        )

    def _ids(self, text: str) -> list[int]:
        # The template already holds every special token it wants (BOS included, if any).
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _response(self, prompt_text: str, user: dict[str, str], response: str) -> list[int]:
        full = self._template([user, {"role": "assistant", "content": response}], False)
        if not full.startswith(prompt_text):
            raise ValueError(
                "chat template: the templated conversation does not start with the templated "
                "prompt plus generation prefix; set model.chat_template to one where it does"
            )
        return self._ids(full[len(prompt_text):])

    def encode(self, prompt: str, chosen: str, rejected: str) -> EncodedPair:
        user = {"role": "user", "content": prompt}
        prompt_text = self._template([user], True)
        prompt_ids = self._ids(prompt_text)
        pair = EncodedPair(
            prompt=prompt_ids[-self.max_prompt_length:],
            chosen=self._response(prompt_text, user, chosen),
            rejected=self._response(prompt_text, user, rejected),
        )
        pair.prompt_truncated = len(prompt_ids) > self.max_prompt_length
        pair.chosen_truncated = len(pair.chosen) > self.max_response_length
        pair.rejected_truncated = len(pair.rejected) > self.max_response_length
        pair.chosen = pair.chosen[: self.max_response_length]
        pair.rejected = pair.rejected[: self.max_response_length]
        return pair

    def encode_many(self, prompts: Sequence[str], chosen: Sequence[str],
                    rejected: Sequence[str]) -> list[EncodedPair]:
        return [self.encode(p, c, r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id


def _sequences(pairs: Sequence[EncodedPair]) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) of the 2B sequences: all chosen, then all rejected."""
    if not pairs:
        raise ValueError("collate_pairs: no pairs")
    return [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def _truncation(pairs: Sequence[EncodedPair]) -> dict[str, int]:
    return {"truncated_prompts": sum(int(p.prompt_truncated) for p in pairs),
            "truncated_responses": sum(p.truncated_responses for p in pairs)}


def collate_pairs(pairs: Sequence[EncodedPair], pad_token_id: int, packed: bool = False
                  ) -> PairBatch:
    """Right-pad the 2B sequences (all chosen, then all rejected) of `pairs` into one batch.

    `packed=True` returns `pack_pairs(pairs)` instead (no padding at all).
    """
    if packed:
        return pack_pairs(pairs)
    rows = _sequences(pairs)
    width = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, resp) in enumerate(rows):
        n = len(prompt) + len(resp)
        input_ids[i, :n] = torch.tensor(prompt + resp, dtype=torch.long)
        attention[i, :n] = 1
        response[i, len(prompt):n] = 1
    return PairBatch(input_ids=input_ids, attention_mask=attention, response_mask=response,
                     **_truncation(pairs))


def pack_pairs(pairs: Sequence[EncodedPair]) -> PairBatch:
    """The 2B sequences of `pairs` back to back in one row, position ids reset per sequence.

    What transformers' `DataCollatorWithFlattening` builds: a [1, T] row with T the sum of the
    sequence lengths, no padding, so the forward costs the real tokens only. A response token is
    never the first of its sequence (its prompt precedes it), so the position before it is in the
    same sequence and no log-prob crosses a boundary.
    """
    ids, response, positions, sequence = [], [], [], []
    for k, (prompt, resp) in enumerate(_sequences(pairs)):
        n = len(prompt) + len(resp)
        ids += prompt + resp
        response += [0] * len(prompt) + [1] * len(resp)
        positions += range(n)
        sequence += [k] * n

    def row(values):
        return torch.tensor([values], dtype=torch.long)

    return PairBatch(input_ids=row(ids), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                     response_mask=row(response), sequence_ids=row(sequence),
                     position_ids=row(positions), **_truncation(pairs))
