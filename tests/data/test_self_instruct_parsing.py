"""Self-instruct requests (few-shot sampling, seeding) and parsing the model's answers."""

import re

import numpy as np
import pyarrow as pa
import pytest

from aipo_ray.config import SelfInstructConfig
from aipo_ray.data.self_instruct import (
    DEFAULT_TEMPLATE,
    SELF_INSTRUCT,
    build_requests,
    num_requests,
    parse_instruction,
    parse_responses,
    sample_few_shot,
)

SEEDS = [f"seed instruction {i}" for i in range(20)]
GENERATED = [f"generated instruction {i}" for i in range(10)]


@pytest.mark.parametrize(("response", "text", "at_end"), [
    ("Write a haiku about rain.", "Write a haiku about rain.", True),
    ("1. Explain tides.\n2. Explain waves.", "Explain tides.", False),
    ("Instruction: Write a poem.\nInstruction: Another one.", "Write a poem.", False),
    ("**New instruction:** Summarise the news.", "Summarise the news.", True),
    ("Task 9: Translate 'cat' into German.", "Translate 'cat' into German.", True),
    ("Sure! Here is a new instruction:\n\n\"Describe the water cycle.\"",
     "Describe the water cycle.", True),
    ("Here is a new instruction: Name three rivers in Africa.", "Name three rivers in Africa.", True),
    ("Certainly.\n\n- List four mammals.\n- List birds.", "List four mammals.", False),
    ("Write a story about a fox.\n\nIt should be funny.", "Write a story about a fox.", False),
    ("Rewrite this text:\nthe cat sat\n\nThanks!", "Rewrite this text:\nthe cat sat", False),
    ("“Explain photosynthesis.”", "Explain photosynthesis.", True),
    ("Here is a list: a, b. Sort it.", "Here is a list: a, b. Sort it.", True),
    ("What does `git rebase` do?\nIt rewrites history.", "What does `git rebase` do?", False),
    ("", "", True),
    ("Instruction:", "", True),
])
def test_parse_instruction_takes_the_first_instruction(response, text, at_end):
    parsed = parse_instruction(response)
    assert (parsed.text, parsed.at_end) == (text, at_end)


@pytest.mark.parametrize(("response", "text", "truncated"), [
    ("Split a bill of $87 with a 15% tip. Show the steps. Then, for each fri",
     "Split a bill of $87 with a 15% tip. Show the steps.", False),
    ('Say "hello." Then go', 'Say "hello."', False),
    ("Write a story about a dog who", "Write a story about a dog who", True),
    ("It costs 2.5 dollars, e.g. the", "It costs 2.5 dollars, e.g. the", True),
    ("1. Name a fruit.\n2. Name a", "Name a fruit.", False),
])
def test_a_max_tokens_cut_keeps_whole_sentences_or_marks_truncation(response, text, truncated):
    parsed = parse_instruction(response, cut=True)
    assert (parsed.text, parsed.truncated) == (text, truncated)
    assert parse_instruction(response, cut=False).truncated is False


def test_parse_responses_flags_truncation_only_when_the_parse_reached_the_cut():
    gens = pa.table({
        "prompt_id": ["si-001-000001", "si-001-000000", "si-001-000002"],
        "prompt": ["r"] * 3, "candidate_idx": [0, 0, 0],
        "response": ["Write a story about a dog who", "1. Name a fruit.\n2. Name a", None],
        "num_tokens": [8, 9, 0], "finish_reason": ["length", "length", "stop"],
    })
    table = parse_responses(gens, iteration=2)
    assert table.schema == SELF_INSTRUCT
    rows = table.to_pylist()
    assert [r["request_id"] for r in rows] == ["si-001-000000", "si-001-000001", "si-001-000002"]
    assert [r["prompt"] for r in rows] == ["Name a fruit.", "Write a story about a dog who", ""]
    assert [r["truncated"] for r in rows] == [False, True, False]
    assert {r["iteration"] for r in rows} == {2} and {r["source"] for r in rows} == {"self_instruct"}


def test_few_shot_mixes_seeds_and_generated_and_fills_from_the_other_side():
    rng = np.random.default_rng(0)
    picked = sample_few_shot(SEEDS, GENERATED, k=8, k_generated=2, rng=rng)
    assert len(set(picked)) == 8
    assert sum(p.startswith("generated") for p in picked) == 2
    assert len(sample_few_shot(SEEDS[:3], GENERATED, k=8, k_generated=2, rng=rng)) == 8
    only_seeds = sample_few_shot(SEEDS, [], k=8, k_generated=2, rng=rng)
    assert len(only_seeds) == 8 and all(p.startswith("seed") for p in only_seeds)
    assert len(sample_few_shot(SEEDS[:2], [], k=8, k_generated=2, rng=rng)) == 2


def test_requests_are_seeded_by_iteration_and_count_p_times_oversample():
    cfg = SelfInstructConfig(num_instructions=5, oversample=1.5, num_few_shot=4)
    assert num_requests(cfg) == 8
    a = build_requests(SEEDS, GENERATED, cfg, seed=0, iteration=1)
    again = build_requests(SEEDS, GENERATED, cfg, seed=0, iteration=1)
    later = build_requests(SEEDS, GENERATED, cfg, seed=0, iteration=2)
    assert a.num_rows == 8 and a.equals(again)
    assert a.column("prompt").to_pylist() != later.column("prompt").to_pylist()
    assert len(set(a.column("prompt_id").to_pylist())) == 8
    first = a.column("prompt")[0].as_py()
    assert first.startswith(DEFAULT_TEMPLATE.split("{examples}")[0])
    assert re.findall(r"\n(\d)\. (?:seed|generated) instruction", first) == ["1", "2", "3", "4"]


def test_custom_template_and_empty_pool():
    cfg = SelfInstructConfig(num_instructions=1, oversample=1, num_few_shot=2,
                             prompt_template="Examples:\n{examples}\nNew one:")
    req = build_requests(SEEDS, [], cfg, seed=3, iteration=1).column("prompt")[0].as_py()
    assert req.startswith("Examples:\n1. seed instruction") and req.endswith("\nNew one:")
    with pytest.raises(ValueError, match="non-empty prompt pool"):
        build_requests([], [], cfg, seed=0, iteration=1)
