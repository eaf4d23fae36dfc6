"""Any causal LM as a pairwise judge: "which response is better, A or B?".

The judge's logit that A beats B is log p("A") − log p("B") for the next token after the
question (chat template applied when the tokenizer has one), where p("A") sums the letter with and
without a leading space. As a comparator it plugs into the same full-matrix and tournament
aggregation as PairRM (pairwise.py), which always asks both orders, so a judge that prefers
whatever is shown first gains nothing from it. This is the ranker of the offline local run
(SmolLM2 judging its own samples) and the default (`ranking.judge_prompt: ab`).

With `ranking.judge_prompt: self_rewarding` the judge instead writes, greedily, a judgement of
each response with the Self-Rewarding LLM-as-a-Judge prompt (judge_prompts.py) and its
"Score: 0..5" is the response's score: the paper's LLM-judge ablation (AIPO Tab. 4). Greedy
decoding is deterministic, so an unreadable judgement is not asked again: the prompt is
rejected with the reply quoted (judge.py).
"""

from __future__ import annotations

import torch

from .judge_prompts import AB_TEMPLATE, judge_max_tokens, judge_mode
from .registry import RankerContext, register_ranker

JUDGE_TEMPLATE = AB_TEMPLATE


class LLMJudge:
    """A causal LM and its tokenizer asked to pick A or B, batched with left padding."""

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 8,
        max_prompt_tokens: int = 512,
        max_response_tokens: int = 512,
        template: str = JUDGE_TEMPLATE,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.template = template
        self.letter_ids = {letter: _letter_token_ids(tokenizer, letter) for letter in "AB"}
        pad = tokenizer.pad_token_id
        # Padding is masked and positions come from the mask, so the pad id itself never matters
        # (SmolLM2's pad is its EOS).
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: torch.dtype | None = None,
                        model=None, storage=None, **kwargs):
        """The judge in `path`; `model` (a ModelConfig) when the judge is θ_t, read as the run's
        `model` section says (see aipo_ray.models.loading)."""
        from aipo_ray.models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(model, path, storage)
        lm = load_causal_lm(model, path, dtype or torch.float32).to(device)
        return cls(lm, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _truncate(self, text: str, limit: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])

    def encode(self, prompt: str, response_a: str, response_b: str) -> list[int]:
        """Token ids of the question whose next token is the judge's answer."""
        content = self.template.format(
            prompt=self._truncate(prompt, self.max_prompt_tokens),
            response_a=self._truncate(response_a, self.max_response_tokens),
            response_b=self._truncate(response_b, self.max_response_tokens),
        )
        return self._encode_message(content, "\nAnswer:")

    def shorten(self, prompt: str, response: str) -> tuple[str, str]:
        """The instruction and a response cut to the judge's token limits."""
        return (self._truncate(prompt, self.max_prompt_tokens),
                self._truncate(response, self.max_response_tokens))

    def _encode_message(self, content: str, plain_suffix: str) -> list[int]:
        """A user message as the judge's input: its chat template when it has one, else the text
        and `plain_suffix` (where a base model's answer begins)."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(content + plain_suffix)["input_ids"]

    @torch.no_grad()
    def write(self, messages: list[str], max_new_tokens: int) -> list[str]:
        """The judge's greedy replies to user messages, batched longest first."""
        encoded = [self._encode_message(m, "\n") for m in messages]
        out = [""] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda k: len(encoded[k]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = self._left_padded([encoded[k] for k in chunk])
            generated = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad_id,
            )
            for row, k in enumerate(chunk):
                out[k] = self.tokenizer.decode(generated[row, ids.shape[1]:],
                                               skip_special_tokens=True)
        return out

    @torch.no_grad()
    def compare_pairs(self, sources: list[str], lefts: list[str], rights: list[str]) -> torch.Tensor:
        """Logit per triple that the left response (shown as A) beats the right one (B)."""
        encoded = [self.encode(s, a, b) for s, a, b in zip(sources, lefts, rights, strict=True)]
        out = torch.zeros(len(encoded), dtype=torch.float32)
        order = sorted(range(len(encoded)), key=lambda k: len(encoded[k]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logits = self._next_token_logits([encoded[k] for k in chunk]).float()
            a = torch.logsumexp(logits[:, self.letter_ids["A"]], dim=-1)
            b = torch.logsumexp(logits[:, self.letter_ids["B"]], dim=-1)
            out[torch.tensor(chunk)] = (a - b).cpu()
        return out

    def _next_token_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """[K, V] logits after each sequence; left padding so the last position is every row's."""
        ids, mask = self._left_padded(sequences)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device), logits_to_keep=1,
        )
        return out.logits[:, -1]

    def _left_padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        return ids, mask


def _letter_token_ids(tokenizer, letter: str) -> list[int]:
    """Single-token spellings of a letter ("A", " A"); the answer may come with a space or not."""
    ids = []
    for variant in (letter, " " + letter):
        encoded = tokenizer.encode(variant, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(f"the judge's tokenizer has no single token for {letter!r}")
    return ids


@register_ranker("llm_judge", check=judge_mode)
def build_llm_judge(cfg, ctx: RankerContext):
    """`ranking.model` (a causal LM, or 'policy' for θ_t) asked A-or-B in both orders, or
    writing a Self-Rewarding judgement of each response (`ranking.judge_prompt`)."""
    from aipo_ray.models import resolve_dtype

    from .base import PairwiseRanker
    from .build import POLICY, judge_model_path
    from .judge import PointwiseJudge

    policy = ctx.model if cfg.model == POLICY else None
    judge = LLMJudge.from_pretrained(
        judge_model_path(cfg, ctx.policy_model_path, ctx.storage), device=ctx.device,
        dtype=resolve_dtype(policy, ctx.on_gpu, cfg.dtype), model=policy, storage=ctx.storage,
        batch_size=cfg.pair_batch_size, max_prompt_tokens=cfg.judge_max_prompt_tokens,
        max_response_tokens=cfg.judge_max_response_tokens,
    )
    if judge_mode(cfg) == "pointwise":
        tokens = judge_max_tokens(cfg, "pointwise")
        return PointwiseJudge(lambda messages: judge.write(messages, tokens), parse_retries=0,
                              shorten=judge.shorten)
    return PairwiseRanker(judge.compare_pairs, cfg.mode)
