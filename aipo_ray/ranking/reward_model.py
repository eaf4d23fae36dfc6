"""A scalar reward model as the ranker: any `AutoModelForSequenceClassification` with one output.

    rm = RewardModelRanker.from_pretrained("Skywork/Skywork-Reward-V2-Qwen3-0.6B", device="cuda")
    scores = rm.score(prompts, candidates)  # [B, N] float64, higher is better

The score of a response is the model's `logits[0, 0]` (in float32) for the conversation
`[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]`, tokenised
with the reward model's own chat template, `apply_chat_template(conv, tokenize=True)`, as the
Skywork-Reward-V2 model card does. One forward per candidate, no pairwise comparisons.

Batching never changes a score (batched equals unbatched to float rounding, whatever the pad
token is). transformers' decoder sequence-classification heads read the logit at "the rightmost
token that is not `pad_token_id`": when the pad token is also the EOS or end-of-turn token
(SmolLM2, many Qwen and Llama fine-tunes) and a conversation ends with it, that picks the token
before the real last one, and with padding the choice depends on the pad id, not the mask. So
we never let the head choose: we right-pad, run the base model with the attention mask, take
the hidden state at each row's last real position (mask length − 1, so the pad id is never
consulted) and apply the model's own score head to it. The logit at the last position is what
the model computes for the unpadded conversation at batch size 1. A model whose head we cannot
reach that way (no `score` linear layer, e.g. an encoder classifier or remote code) is batched
only with sequences of exactly its own length, so nothing is ever padded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import torch

from .base import ScoringRanker
from .pairwise import num_candidates
from .registry import RankerContext, register_ranker


class RewardModelRanker(ScoringRanker):
    """A loaded sequence-classification reward model and its tokenizer on one device."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 4096):
        num_labels = getattr(model.config, "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"ranking.backend 'reward_model' needs a sequence-classification model with one "
                f"output (num_labels = 1, a scalar reward); this one has num_labels = {num_labels}"
            )
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the reward model's tokenizer has no chat template: a reward model is scored on "
                "the conversation in its own template; add one (tokenizer_config.json "
                "'chat_template' or chat_template.jinja) to the checkpoint"
            )
        if max_length < 16:
            raise ValueError(f"max_length must be at least 16, got {max_length}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        # Set for any code path of the model that consults it (its own forward refuses batches
        # without one); our scores never depend on it, see the module docstring.
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_id
        head = getattr(model, "score", None)
        base = getattr(model, "base_model", None)
        self._split = isinstance(head, torch.nn.Linear) and base is not None and base is not model

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, storage=None,
                        trust_remote_code: bool = False, **kwargs) -> RewardModelRanker:
        """The reward model at `path`: a local dir, a hub id, or a committed checkpoint URI
        (resolved by `aipo_ray.models.resolve_model_path`)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from aipo_ray.models import resolve_model_path

        local = resolve_model_path(path, storage)
        config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
        if getattr(config, "num_labels", None) != 1:
            raise ValueError(
                f"ranking.model {path!r} has num_labels = {getattr(config, 'num_labels', None)}; "
                "the reward_model ranker needs a scalar reward model (num_labels = 1)"
            )
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            local, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code
        )
        return cls(model.to(device), tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _template(self, prompt: str, response: str) -> list[int]:
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        out = self.tokenizer.apply_chat_template(conv, tokenize=True)
        ids = out["input_ids"] if isinstance(out, Mapping) else out  # transformers 5: a BatchEncoding
        return list(ids)

    def encode(self, prompt: str, response: str) -> list[int]:
        """The conversation's token ids, at most `max_length` of them.

        Too long, it loses tokens from the LEFT of the prompt: a reward model judges the
        response, so the response is kept whole, and of the prompt the end (usually the actual
        question, after any context) is what it needs most. The template is re-applied to the
        shortened prompt, so its role markers stay intact; re-tokenising at the cut can merge
        differently, hence the loop. Only if the response alone does not fit are the last
        `max_length` tokens kept: the response's end and the end-of-turn token, where the score
        is read, stay.
        """
        ids = self._template(prompt, response)
        if len(ids) <= self.max_length:
            return ids
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        cut = len(ids) - self.max_length
        while cut < len(prompt_ids):
            ids = self._template(self.tokenizer.decode(prompt_ids[cut:]), response)
            if len(ids) <= self.max_length:
                return ids
            cut += len(ids) - self.max_length
        return self._template("", response)[-self.max_length:]

    def score(self, prompts: list[str], candidates: list[list[str]]) -> np.ndarray:
        n = num_candidates(prompts, candidates)
        encoded = [self.encode(p, c) for p, cands in zip(prompts, candidates, strict=True) for c in cands]
        return self.score_sequences(encoded).astype(np.float64).reshape(len(prompts), n)

    @torch.no_grad()
    def score_sequences(self, sequences: list[list[int]]) -> np.ndarray:
        """The reward of each tokenised conversation, float32; batched by length."""
        out = np.zeros(len(sequences), dtype=np.float32)
        for chunk in self._batches(sequences):
            out[chunk] = self._forward([sequences[k] for k in chunk])
        return out

    def _batches(self, sequences: list[list[int]]) -> list[list[int]]:
        order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]), reverse=True)
        if self._split:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        by_length: dict[int, list[int]] = defaultdict(list)  # no padding at all, see docstring
        for k in order:
            by_length[len(sequences[k])].append(k)
        return [rows[i : i + self.batch_size] for rows in by_length.values()
                for i in range(0, len(rows), self.batch_size)]

    def _forward(self, sequences: list[list[int]]) -> np.ndarray:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding: positions 0..len-1 as unpadded
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if not self._split:
            return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu().numpy()
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(-1) - 1
        pooled = hidden[torch.arange(len(sequences), device=hidden.device), last]
        return self.model.score(pooled)[:, 0].float().cpu().numpy()


def _reward_model_named(cfg) -> None:
    from aipo_ray.config import RankingConfig

    from .build import POLICY

    if cfg.model in (RankingConfig.model_fields["model"].default, POLICY):
        raise ValueError(
            "ranking.backend 'reward_model' needs ranking.model set to a sequence-classification "
            f"reward model (a dir, hub id or s3:// checkpoint), not {cfg.model!r}"
        )


@register_ranker("reward_model", check=_reward_model_named)
def build_reward_model(cfg, ctx: RankerContext) -> RewardModelRanker:
    """`ranking.model` as a scalar reward model, bfloat16 on a GPU, float32 on a CPU."""
    return RewardModelRanker.from_pretrained(
        cfg.model, device=ctx.device, dtype=ctx.dtype(cfg, torch.bfloat16), storage=ctx.storage,
        batch_size=cfg.pair_batch_size, max_length=cfg.max_length,
    )
