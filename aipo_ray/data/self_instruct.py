"""Self-instruct with θ_t: x^i = SelfInstruct_θt(X^pool) (paper Algorithm 1; Wang et al. 2023).

Each request shows the current model k instructions sampled from the pool and asks it for one new
instruction. Wang et al. prompt a base model with a numbered list to continue; θ_t is a chat model,
so the request is a user message and the chat template comes from the generation backend. As in
Wang et al., most of the k examples come from the seed sources and at most `num_few_shot_generated`
from instructions made in earlier iterations, so the pool cannot drift away from its seeds.

This module makes requests and parses answers; `filters` decides which answers become prompts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from aipo_ray.config import GenerationConfig, ModelConfig, SelfInstructConfig, StorageConfig
from aipo_ray.storage import make_prompt_id
from aipo_ray.storage.schemas import SELF_INSTRUCT

SOURCE = "self_instruct"

DEFAULT_TEMPLATE = (
    "Here are some instructions that people have given to an AI assistant:\n\n"
    "{examples}\n\n"
    "Write one new instruction that a person might give to an AI assistant. Make it different "
    "from every instruction above, in topic and in the kind of task, and answerable with text "
    "alone. Reply with the new instruction only: no answer, no numbering, no explanation."
)



def num_requests(cfg: SelfInstructConfig) -> int:
    """P·oversample requests, so that P survive filters that refuse a share of the answers."""
    return math.ceil(cfg.num_instructions * cfg.oversample)


def sample_few_shot(
    seeds: Sequence[str], generated: Sequence[str], k: int, k_generated: int,
    rng: np.random.Generator,
) -> list[str]:
    """k distinct examples: up to `k_generated` from `generated`, the rest from `seeds`, shuffled.

    When one side is short the other makes up the difference, so small pools still give k.
    """
    n_gen = min(k_generated, len(generated), k)
    n_seed = min(k - n_gen, len(seeds))
    n_gen = min(k - n_seed, len(generated))
    picked = [seeds[i] for i in rng.choice(len(seeds), n_seed, replace=False)] if n_seed else []
    if n_gen:
        picked += [generated[i] for i in rng.choice(len(generated), n_gen, replace=False)]
    rng.shuffle(picked)
    return picked


def format_request(examples: Sequence[str], template: str | None = None) -> str:
    listed = "\n".join(f"{i}. {ex.strip()}" for i, ex in enumerate(examples, start=1))
    return (template or DEFAULT_TEMPLATE).replace("{examples}", listed)


def build_requests(
    seeds: Sequence[str], generated: Sequence[str], cfg: SelfInstructConfig, *, seed: int,
    iteration: int, count: int | None = None, round: int = 0,
) -> pa.Table:
    """(prompt_id, prompt) of every request; the same seed, iteration and sampling round
    (pipeline/rounds.py; 0 or 1 for the first) give the same requests."""
    if not seeds and not generated:
        raise ValueError("self-instruct needs a non-empty prompt pool to sample examples from")
    later_round = round > 1
    rng = np.random.default_rng([seed, iteration, round] if later_round else [seed, iteration])
    # Request ids seed the candidates (generation), so a later round's must differ too.
    prefix = f"si-{iteration:03d}-r{round:02d}" if later_round else f"si-{iteration:03d}"
    count = num_requests(cfg) if count is None else count
    ids, prompts = [], []
    for r in range(count):
        examples = sample_few_shot(seeds, generated, cfg.num_few_shot, cfg.num_few_shot_generated,
                                   rng)
        # Request ids stay unique even when two requests draw the same examples.
        ids.append(f"{prefix}-{r:06d}")
        prompts.append(format_request(examples, cfg.prompt_template))
    return pa.table({"prompt_id": ids, "prompt": prompts})


@dataclass(frozen=True)
class Parsed:
    """The first instruction of a response.

    `at_end`: the parse ran to the end of the response. `truncated`: it also ran into a
    max_tokens cut and no complete sentence could be kept, so the instruction is unfinished.
    """

    text: str
    at_end: bool
    truncated: bool = False


# A whole line of chatter before the instruction: "Sure!", "Here is a new instruction:".
_PREAMBLE = re.compile(
    r"^(?:sure|okay|ok|certainly|of course|here(?:'s| is| are)|below is|absolutely)\b"
    r"(?:[^\n]*:|[\s!.,]*)$",
    re.IGNORECASE,
)
# "Here is a new instruction: Write ..." on one line: the preamble names what follows.
_INLINE_PREAMBLE = re.compile(
    r"^(?:sure|okay|ok|certainly|of course|here(?:'s| is)|below is|absolutely)\b[^:\n]*"
    r"\b(?:instruction|task|prompt|one)\b[^:\n]*:\s+(?=\S)",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"^\s*(?:[*_#>]+\s*)*(?:\d+\s*[.):]\s+|[-•*]\s+|#\d+\s*[.:)]?\s*|\(\d+\)\s*)?(?:[*_]+\s*)?"
    r"(?:(?:new\s+|my\s+)?(?:instruction|task|prompt|request)\s*#?\s*\d*\s*[:.-]\s*)?(?:[*_]+\s*)?",
    re.IGNORECASE,
)
_ITEM_START = re.compile(
    r"^\s*(?:\d+\s*[.):]\s+|[-•*]\s+|(?:new\s+)?(?:instruction|task)\s*#?\s*\d*\s*:)", re.IGNORECASE
)
# The end of a sentence: . ? or ! (not inside "2.5" or "e.g."), maybe closed by a quote/bracket.
_SENTENCE_END = re.compile(r"(?<!\b[a-z])(?<!\d)[.?!]+[\"'”’)\]]*(?=\s|$)", re.IGNORECASE)
_QUOTES = [('"', '"'), ("“", "”"), ("'", "'"), ("‘", "’"), ("`", "`"), ("**", "**")]


def parse_instruction(response: str, cut: bool = False) -> Parsed:
    """The first instruction in a response: preamble lines ("Sure! Here is one:") skipped, then
    lines up to a blank line or the next numbered/labelled item, with numbering, "Instruction:"
    labels, markdown emphasis and wrapping quotes stripped.

    A first line that is a whole sentence is the instruction on its own: what follows it is
    usually the model answering itself. `cut` says the response was stopped by max_tokens: a
    parse that ran into the cut keeps its complete sentences and drops the broken tail.
    """
    lines = response.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines) and (not lines[i].strip() or _PREAMBLE.match(lines[i].strip())):
        i += 1
    block: list[str] = []
    j = i
    while j < len(lines):
        line = lines[j]
        if not line.strip() or (block and _ITEM_START.match(line)):
            break
        block.append(line)
        j += 1
    if block:
        block[0] = _LABEL.sub("", _INLINE_PREAMBLE.sub("", block[0].strip(), count=1), count=1)
        if len(block) > 1 and _SENTENCE_END.search(block[0].rstrip()):
            block, j = block[:1], i + 1
    at_end = all(not line.strip() for line in lines[j:])
    text = "\n".join(block).strip()
    if not (cut and at_end):
        return Parsed(_strip_quotes(text), at_end)
    whole = list(_SENTENCE_END.finditer(text))
    if not whole:
        return Parsed(_strip_quotes(text), at_end, truncated=bool(text))
    return Parsed(_strip_quotes(text[:whole[-1].end()].strip()), at_end)


def _strip_quotes(text: str) -> str:
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for left, right in _QUOTES:
            if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
                inner = text[len(left):-len(right)]
                if left not in inner and right not in inner:
                    text, changed = inner.strip(), True
    return text


def parse_responses(generations: pa.Table, iteration: int) -> pa.Table:
    """Generation output (one row per request) → the SELF_INSTRUCT table, in request order."""
    rows = sorted(generations.to_pylist(), key=lambda r: (r["prompt_id"], r["candidate_idx"]))
    out: dict[str, list] = {name: [] for name in SELF_INSTRUCT.names}
    for r in rows:
        parsed = parse_instruction(r["response"] or "", cut=r["finish_reason"] == "length")
        values = (make_prompt_id(parsed.text), parsed.text, SOURCE, iteration, r["prompt_id"],
                  r["response"] or "", r["finish_reason"], parsed.truncated)
        for name, value in zip(SELF_INSTRUCT.names, values, strict=True):
            out[name].append(value)
    return pa.table(out, schema=SELF_INSTRUCT)


def self_instruct(
    seeds: Sequence[str], generated: Sequence[str], model_uri: str, cfg: SelfInstructConfig,
    generation: GenerationConfig, *, seed: int, iteration: int,
    storage: StorageConfig | None = None, model: ModelConfig | None = None,
) -> pa.Table:
    """Ask θ_t (`model_uri`, read as `model` says) for new instructions; returns the parsed,
    unfiltered SELF_INSTRUCT rows."""
    from aipo_ray.actor_pool import collect
    from aipo_ray.storage.schemas import GENERATIONS

    requests = build_requests(seeds, generated, cfg, seed=seed, iteration=iteration)
    out = answer_requests(requests, model_uri, cfg, generation, storage=storage, model=model)
    return parse_responses(collect(out, GENERATIONS), iteration)


def answer_requests(
    requests: pa.Table, model_uri: str, cfg: SelfInstructConfig, generation: GenerationConfig,
    *, storage: StorageConfig | None = None, model: ModelConfig | None = None,
):
    """θ_t's answers to `requests` (build_requests), one per request, as a lazy Ray Data Dataset
    in the `generations` columns; `parse_responses` turns them into SELF_INSTRUCT rows."""
    import ray

    from aipo_ray.generation import generate

    # Request ids carry the iteration, and generation seeds each candidate by (seed, prompt_id),
    # so every iteration samples afresh while a rerun of the same iteration replays exactly.
    return generate(ray.data.from_arrow(requests), model_uri, generation, n=1,
                    max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    storage=storage, model=model)
