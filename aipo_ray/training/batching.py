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
    """B pairs as 2B right-padded rows: rows 0..B-1 are chosen, rows B..2B-1 rejected.

    `response_mask` is 1 on response tokens only; prompt and padding positions are 0. It is
    built from lengths, never from token ids (SmolLM2's pad token is its EOS token).
    """

    input_ids: Tensor  # [2B, L] long
    attention_mask: Tensor  # [2B, L] long
    response_mask: Tensor  # [2B, L] long
    truncated_prompts: int
    truncated_responses: int

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.input_ids.to(device), self.attention_mask.to(device),
                         self.response_mask.to(device), self.truncated_prompts,
                         self.truncated_responses)


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


def collate_pairs(pairs: Sequence[EncodedPair], pad_token_id: int) -> PairBatch:
    """Right-pad the 2B sequences (all chosen, then all rejected) of `pairs` into one batch."""
    if not pairs:
        raise ValueError("collate_pairs: no pairs")
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, resp) in enumerate(rows):
        n = len(prompt) + len(resp)
        input_ids[i, :n] = torch.tensor(prompt + resp, dtype=torch.long)
        attention[i, :n] = 1
        response[i, len(prompt):n] = 1
    return PairBatch(
        input_ids=input_ids, attention_mask=attention, response_mask=response,
        truncated_prompts=sum(int(p.prompt_truncated) for p in pairs),
        truncated_responses=sum(p.truncated_responses for p in pairs),
    )
