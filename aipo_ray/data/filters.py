"""Rule-based filters for self-instructed prompts (paper A.1; the rules of Wang et al. 2023).

Each rule is a small named function `(Instruction, FilterConfig) -> reason | None`. A reason reads
"code: detail"; the code (before the colon) is what `_SUCCESS` counts, the detail what a person
reading `_rejected/` needs. Rules run in `RULES` order and the first reason wins; near-duplicates
(against the pool, then against the instructions kept so far) are checked last because they are the
only rule that looks beyond one row.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aipo_ray.config import FilterConfig
from aipo_ray.storage import make_prompt_id

from .similarity import NearDuplicateIndex, words


@dataclass(frozen=True)
class Instruction:
    """A parsed instruction and what the parse knows about how the model produced it."""

    text: str
    num_tokens: int | None = None  # under θ_t's tokenizer; None skips the token bounds
    truncated: bool = False  # the parse ran into the end of a response cut at max_tokens


Rule = Callable[[Instruction, FilterConfig], "str | None"]
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn
    return register


def reason_code(reason: str) -> str:
    return reason.split(":", 1)[0]


@rule("empty")
def check_empty(ins: Instruction, cfg: FilterConfig) -> str | None:
    return "empty: nothing parsed from the response" if not ins.text.strip() else None


_ROLE_TAG = re.compile(
    r"<\|[a-z_]+\|>|<\|?(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id)\|?>"
    r"|</?s>|\[/?INST\]|<</?SYS>>|^\s*(?:assistant|user|system|human|gpt)\s*:|###\s*(?:assistant|user"
    r"|response|human)",
    re.IGNORECASE | re.MULTILINE,
)
# After parsing, a label left in the text means the model went on listing ("... Instruction 2:").
# Only labels the self-instruct prompt itself invites, so "Answer this question:" stays legal.
_ECHO = re.compile(
    r"\b(?:new\s+)?instruction\s*#?\s*\d*\s*:|\b(?:task|example)\s*#?\s*\d+\s*:",
    re.IGNORECASE,
)


@rule("artifact")
def check_artifacts(ins: Instruction, cfg: FilterConfig) -> str | None:
    """Chat-template role tags and echoed labels: the model wrote format, not an instruction."""
    if not cfg.reject_artifacts:
        return None
    if m := _ROLE_TAG.search(ins.text):
        return f"role_tag: {m.group(0).strip()!r}"
    if m := _ECHO.search(ins.text):
        return f"instruction_echo: {m.group(0).strip()!r}"
    return None


# Words no finished sentence ends on ("Explain what a monad is" does, so no verbs here).
_DANGLING = {"a", "an", "the", "and", "or", "but", "of", "to", "for", "with", "by", "from", "about",
             "as", "your", "my", "their"}


@rule("unfinished")
def check_unfinished(ins: Instruction, cfg: FilterConfig) -> str | None:
    """Cut off by max_tokens, or ending where no sentence ends (a comma, 'the', an open bracket)."""
    if not cfg.reject_artifacts:
        return None
    if ins.truncated:
        return "unfinished: the response hit max_tokens inside the instruction"
    text = ins.text.rstrip()
    if text and text[-1] in ",;:-–(/[{&":
        return f"unfinished: ends with {text[-1]!r}"
    tail = words(text[-40:])
    if tail and tail[-1] in _DANGLING and text[-1].isalnum():
        return f"unfinished: ends with {tail[-1]!r}"
    if text.count("(") > text.count(")") or text.count('"') % 2:
        return "unfinished: unbalanced brackets or quotes"
    return None


@rule("length")
def check_length(ins: Instruction, cfg: FilterConfig) -> str | None:
    """Word bounds (Wang et al.: 3..150) and token bounds under θ_t's tokenizer."""
    n = len(words(ins.text))
    if n < cfg.min_words:
        return f"too_few_words: {n} < {cfg.min_words}"
    if n > cfg.max_words:
        return f"too_many_words: {n} > {cfg.max_words}"
    if ins.num_tokens is not None and ins.num_tokens < cfg.min_tokens:
        return f"too_few_tokens: {ins.num_tokens} < {cfg.min_tokens}"
    if ins.num_tokens is not None and ins.num_tokens > cfg.max_tokens:
        return f"too_many_tokens: {ins.num_tokens} > {cfg.max_tokens}"
    return None


_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i can(?:no|')t|i am unable|i'?m unable|i am not able"
    r"|i'?m not able|i won'?t be able|as an ai\b|as a language model|as an ai language model"
    r"|i do not have the ability|i don'?t have (?:access|the ability)|cannot fulfill|can'?t assist)",
    re.IGNORECASE,
)


@rule("refusal")
def check_refusal(ins: Instruction, cfg: FilterConfig) -> str | None:
    if cfg.reject_refusals and (m := _REFUSAL.search(ins.text.replace("’", "'"))):
        return f"refusal: {m.group(0)!r}"
    return None


_PLACEHOLDER = re.compile(
    r"\[(?:insert|your|name|topic|placeholder|input|x+|blank|[a-z ]*here)[^\]]*\]|<(?:insert|your|"
    r"placeholder|input|topic|name)[^>]*>|\{\{?\s*[a-z_]+\s*\}?\}|\b(?:lorem ipsum|xxx+)\b"
    r"|_{3,}|<noinput>|\bn/a\b",
    re.IGNORECASE,
)


@rule("placeholder")
def check_placeholder(ins: Instruction, cfg: FilterConfig) -> str | None:
    """Template slots left unfilled: '[insert topic]', '{name}', 'lorem ipsum', '___', 'N/A'."""
    if m := _PLACEHOLDER.search(ins.text):
        return f"placeholder: {m.group(0).strip()!r}"
    return None


@rule("non_text")
def check_non_text(ins: Instruction, cfg: FilterConfig) -> str | None:
    """Wang et al.: starts with punctuation or a non-letter; also mostly symbols, or control bytes."""
    text = ins.text.strip()
    if not text:
        return None
    if any(unicodedata.category(ch) in ("Cc", "Co", "Cs") and ch not in "\n\t" for ch in text) or (
            "\ufffd" in text):
        return "non_text: control or undecodable characters"
    first = unicodedata.category(text[0])
    if not (first.startswith("L") or first.startswith("N") or text[0] in "\"'“‘¿¡`"):
        return f"non_text: starts with {text[0]!r}"
    visible = [ch for ch in text if not ch.isspace()]
    letters = sum(ch.isalpha() for ch in visible)
    if letters < 0.5 * len(visible):
        return f"non_text: only {letters}/{len(visible)} visible characters are letters"
    return None


@functools.lru_cache(maxsize=32)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern | None:
    if not keywords:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, k.split())) for k in keywords if k.strip())
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if alternatives else None


@rule("blocked_keyword")
def check_keywords(ins: Instruction, cfg: FilterConfig) -> str | None:
    """Whole-word matches of `block_keywords` (default: tasks needing images, files, audio...)."""
    pattern = _keyword_pattern(tuple(cfg.block_keywords))
    if pattern is not None and (m := pattern.search(ins.text)):
        return f"blocked_keyword: {m.group(0).lower()!r}"
    return None


def first_failure(ins: Instruction, cfg: FilterConfig) -> str | None:
    """The first row-level rule that refuses `ins`, or None when every rule passes."""
    for check in RULES.values():
        if (reason := check(ins, cfg)) is not None:
            return reason
    return None


@dataclass
class FilterResult:
    """Indices (into the input) kept, refused with a reason, and left over once `limit` was met."""

    kept: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    surplus: list[int] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(reason_code(r) for _, r in self.rejected))


def filter_instructions(
    instructions: Sequence[Instruction], pool: Sequence[str], cfg: FilterConfig,
    limit: int | None = None,
) -> FilterResult:
    """Keep instructions in order until `limit` pass: row rules, then exact and near duplicates
    against `pool` and against the instructions kept before."""
    result = FilterResult()
    pool_ids = {make_prompt_id(t) for t in pool}
    pool_index = NearDuplicateIndex(cfg.similarity, cfg.max_similarity, cfg.ngram_size)
    pool_index.add_many(pool)
    kept_index = NearDuplicateIndex(cfg.similarity, cfg.max_similarity, cfg.ngram_size)
    kept_ids: set[str] = set()
    for i, ins in enumerate(instructions):
        if limit is not None and len(result.kept) >= limit:
            result.surplus.extend(range(i, len(instructions)))
            break
        reason = first_failure(ins, cfg) or _duplicate_reason(
            ins.text, pool_ids, kept_ids, pool_index, kept_index, cfg.similarity)
        if reason is not None:
            result.rejected.append((i, reason))
            continue
        result.kept.append(i)
        kept_ids.add(make_prompt_id(ins.text))
        kept_index.add(ins.text)
    return result


def _duplicate_reason(
    text: str, pool_ids: set[str], kept_ids: set[str], pool_index: NearDuplicateIndex,
    kept_index: NearDuplicateIndex, metric: str,
) -> str | None:
    pid = make_prompt_id(text)
    if pid in pool_ids:
        return "duplicate_pool: the same prompt is already in the pool"
    if pid in kept_ids:
        return "duplicate: the same instruction was kept earlier in this iteration"
    for name, index in (("near_duplicate_pool", pool_index), ("near_duplicate", kept_index)):
        if (hit := index.find(text)) is not None:
            score, j = hit
            return f"{name}: {metric} {score:.2f} with {index.text(j)[:120]!r}"
    return None
