"""What an LLM judge is asked, and how its written verdict is read back.

Two prompts:

- `AB_TEMPLATE` (pairwise): "which response follows the instruction better, A or B?"; always asked
  in both orders (pairwise.py), so a judge that favours the first position gains nothing.
- `SELF_REWARDING_TEMPLATE` (pointwise): the LLM-as-a-Judge prompt of Yuan et al. 2024,
  "Self-Rewarding Language Models", arXiv:2401.10020, Figure 2 ("LLM-as-a-Judge prompt for our
  LLM to act as a reward model and provide self-rewards for its own model generations"), quoted
  word for word; only the placeholders <INSTRUCTION_HERE> and <RESPONSE_HERE> are written as
  `{prompt}` and `{response}`. AIPO's Tab. 4 ranks with it (own model and Mixtral-8x7B-Instruct as
  judges). The judge writes a short justification and ends with "Score: <total points>", 0 to 5.

The parsers return None for a reply they cannot read; the caller decides what that costs (a
retry, then the prompt rejected with the reply quoted).
"""

from __future__ import annotations

import re
from typing import Literal

AB_TEMPLATE = (
    "Which response follows the instruction better?\n\n"
    "### Instruction:\n{prompt}\n\n"
    "### Response A:\n{response_a}\n\n"
    "### Response B:\n{response_b}\n\n"
    "Answer with a single letter, A or B."
)

SELF_REWARDING_TEMPLATE = """\
Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's \
inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but \
does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a \
useful way, regardless of whether it seems to have been written by an AI Assistant or if it has \
elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, \
addressing the user's question directly and comprehensively, and is well-organized and helpful, \
even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI \
Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a \
high-quality, engaging, and insightful answer.

User: {prompt}

<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as \
necessary. To evaluate the response in alignment with this additive scoring model, we'll \
systematically attribute points based on the outlined criteria."""

SELF_REWARDING_MAX_POINTS = 5

JudgeMode = Literal["pairwise", "pointwise"]
# Tokens a judge may write when `ranking.judge_max_tokens` is unset: a letter (with room for a
# chat model's "Response A"), or the paper's justification of up to 100 words and the score.
DEFAULT_MAX_TOKENS = {"pairwise": 16, "pointwise": 256}


def judge_mode(cfg) -> JudgeMode:
    """pairwise (the A/B prompt) or pointwise (the self-rewarding prompt) for a ranking config:
    `judge_mode` when set, else what `judge_prompt` implies. Each prompt has one mode, so a
    pairwise self-rewarding judge is refused (ValueError naming the keys)."""
    implied: JudgeMode = "pointwise" if cfg.judge_prompt == "self_rewarding" else "pairwise"
    mode = cfg.judge_mode or implied
    if mode == "pairwise" and cfg.judge_prompt == "self_rewarding":
        raise ValueError("ranking.judge_mode 'pairwise' asks the A/B prompt; ranking.judge_prompt "
                         "'self_rewarding' scores one response at a time: use judge_mode "
                         "'pointwise' or judge_prompt 'ab'")
    return mode


def judge_max_tokens(cfg, mode: JudgeMode) -> int:
    return cfg.judge_max_tokens or DEFAULT_MAX_TOKENS[mode]


def ab_prompt(prompt: str, response_a: str, response_b: str) -> str:
    return AB_TEMPLATE.format(prompt=prompt, response_a=response_a, response_b=response_b)


def self_rewarding_prompt(prompt: str, response: str) -> str:
    return SELF_REWARDING_TEMPLATE.format(prompt=prompt, response=response)


# "Score: 4", "**Score:** 4", "score: 4/5", "Score = 3 points"; the number may be a decimal.
_SCORE = re.compile(
    r"score\W{0,4}?\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE
)


def parse_score(reply: str | None, max_points: int = SELF_REWARDING_MAX_POINTS) -> float | None:
    """The judge's total points: the last "Score: X" (or "Score: X/5") in the reply, when X lies
    in 0..max_points; None when there is none, it is out of range, or it is out of another total
    ("Score: 7/10")."""
    if not reply:
        return None
    matches = list(_SCORE.finditer(reply))
    if not matches:
        return None
    points, total = matches[-1].groups()
    if total is not None and float(total) != max_points:
        return None
    value = float(points)
    return value if 0 <= value <= max_points else None


_WHOLE_LETTER = re.compile(r"[\W_]*(?:response|answer|option)?\s*([AB])[\W_]*", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\[([AB])\]\]")
_DECLARED = re.compile(
    r"(?:answer|verdict|choice|winner|better(?:\s+response)?\s+is|prefer(?:red)?(?:\s+response)?"
    r"(?:\s+is)?)\W{0,3}\s*(?:response\s+)?\**\(?((?-i:[AB]))\b",
    re.IGNORECASE,
)
_LEADING = re.compile(r"[\W_]*(?:(?i:response)\s+)?([AB])(?:[^\w]|$)")


def parse_letter(reply: str | None) -> Literal["A", "B"] | None:
    """The judge's pick: "A", "B." or "**Response B**" alone, "[[A]]", "Answer: B", "The better
    response is A", or a reply that opens with the letter ("A. It is ..."); None otherwise. The
    letters must be capitals outside the first two forms, so the article "a" is never read as A."""
    if not reply:
        return None
    text = reply.strip()
    whole = _WHOLE_LETTER.fullmatch(text)
    if whole:
        return whole.group(1).upper()  # type: ignore[return-value]
    for pattern in (_BRACKETED, _DECLARED):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()  # type: ignore[return-value]
    leading = _LEADING.match(text)
    return leading.group(1) if leading else None  # type: ignore[return-value]


def quote(reply: str | None, limit: int = 120) -> str:
    """A reply shortened for a rejection reason."""
    text = (reply or "").strip().replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
