"""Every self-instruct filter refuses what it should and passes what it should not touch."""

import pytest

from aipo_ray.config import FilterConfig
from aipo_ray.data.filters import (
    RULES,
    Instruction,
    filter_instructions,
    first_failure,
    reason_code,
)

CFG = FilterConfig()


def code(text, cfg=CFG, **kw):
    reason = first_failure(Instruction(text, **kw), cfg)
    return None if reason is None else reason_code(reason)


GOOD = [
    "Write a haiku about the first snow of winter.",
    "Explain what a monad is",
    "Answer the following question: what is 17 times 23?",
    "5 tips for a better night's sleep, please.",
    '"Describe the water cycle in three sentences."',
    "¿Cuál es la capital de Australia?",
    "Rewrite this sentence to sound formal: \"We gotta fix this asap.\"",
    "Write a short story about a robot who wants to become a gardener.",
]


@pytest.mark.parametrize("text", GOOD)
def test_ordinary_instructions_pass_every_rule(text):
    assert first_failure(Instruction(text, num_tokens=20), CFG) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"),
    ("   \n ", "empty"),
    ("<|im_start|>user\nWrite a poem about love.", "role_tag"),
    ("Write a poem about love.<|im_end|>", "role_tag"),
    ("assistant: Write a poem about rivers.", "role_tag"),
    ("[INST] Write a poem about rivers.", "role_tag"),
    ("Write a poem about rivers. Instruction 2: Explain gravity.", "instruction_echo"),
    ("Write a poem. New instruction: explain why the sea is salty.", "instruction_echo"),
    ("Summarise the plot of Hamlet. Task 3: list its characters.", "instruction_echo"),
])
def test_artifact_and_empty_rules(text, expected):
    assert code(text) == expected


@pytest.mark.parametrize(("text", "truncated", "expected"), [
    ("Write a story about the", False, "unfinished"),
    ("List three reasons for", False, "unfinished"),
    ("Compare these two options:", False, "unfinished"),
    ("Describe the history of Rome,", False, "unfinished"),
    ("Explain the theory (in simple terms", False, "unfinished"),
    ("Describe a sunset over the ocean in detail", True, "unfinished"),
    ("Describe a sunset over the ocean in detail", False, None),
    ("What is the theory of relativity about?", False, None),
])
def test_unfinished_rule(text, truncated, expected):
    assert code(text, num_tokens=10, truncated=truncated) == expected


def test_artifact_rules_can_be_switched_off():
    cfg = FilterConfig(reject_artifacts=False)
    assert code("Write a poem about love.<|im_end|>", cfg) is None
    assert code("Write a story about the", cfg) is None


@pytest.mark.parametrize(("text", "num_tokens", "expected"), [
    ("Explain gravity", 3, "too_few_words"),
    ("Explain gravity to kids", 5, None),
    (" ".join(["word"] * 151) + ".", 160, "too_many_words"),
    ("Explain gravity to kids", 2, "too_few_tokens"),
    ("Explain gravity to kids", 513, "too_many_tokens"),
    ("Explain gravity to kids", None, None),  # no tokenizer count: token bounds skipped
])
def test_length_bounds_in_words_and_tokens(text, num_tokens, expected):
    assert code(text, num_tokens=num_tokens) == expected


def test_length_bounds_follow_config():
    cfg = FilterConfig(min_words=1, max_words=4, min_tokens=1, max_tokens=6)
    assert code("Explain gravity", cfg, num_tokens=3) is None
    assert code("Explain gravity to young kids", cfg, num_tokens=6) == "too_many_words"
    assert code("Explain gravity", cfg, num_tokens=7) == "too_many_tokens"


@pytest.mark.parametrize("text", [
    "I'm sorry, but I cannot create a new instruction.",
    "As an AI language model, I do not have opinions on this topic.",
    "I can’t help with writing instructions for you today.",
    "Unfortunately I am unable to think of one right now.",
])
def test_refusals(text):
    assert code(text) == "refusal"
    assert code(text, FilterConfig(reject_refusals=False)) is None


@pytest.mark.parametrize("text", [
    "Write a letter to [insert name] about the meeting.",
    "Summarize the article about {topic} in two sentences.",
    "Describe <your product> to a new customer.",
    "Fill in the blank: the capital of Peru is ___.",
    "Lorem ipsum dolor sit amet consectetur elit.",
    "Write an essay about [TOPIC HERE] in 200 words.",
])
def test_placeholders(text):
    assert code(text) == "placeholder"


@pytest.mark.parametrize("text", [
    "- Write a poem about spring flowers.",
    "!!! Write a poem about spring flowers.",
    "=== 123 456 789 000 111 222 ===",
    "Write a poem\x00 about spring flowers.",
    "Write a poem \ufffd about spring flowers.",
    "Explain {} [] () <> ;; :: ++ -- ** == !! ?? && || ## $$ %% this and that",
])
def test_non_text(text):
    assert code(text) == "non_text"


def test_blocked_keywords_match_whole_words_only():
    assert code("Draw a picture of a cat sitting on a mat.") == "blocked_keyword"
    assert code("Go   to the store and describe what you see there.") == "blocked_keyword"
    assert code("Describe the mapping between keys and values in Python.") is None  # not "map"
    assert code("Explain why people enjoy drawing as a hobby.") is None  # not "draw"
    custom = FilterConfig(block_keywords=["python", "data science"])
    assert code("Describe the mapping between keys and values in Python.", custom) == "blocked_keyword"
    assert code("What is Data  Science used for in banking?", custom) == "blocked_keyword"
    assert code("Draw a picture of a cat sitting on a mat.", custom) is None
    assert code("Draw a picture of a cat.", FilterConfig(block_keywords=[])) is None


def test_every_rule_is_registered_in_order():
    assert list(RULES) == ["empty", "artifact", "unfinished", "length", "refusal", "placeholder",
                           "non_text", "blocked_keyword"]


def test_filter_keeps_first_p_and_rejects_near_duplicates_of_pool_and_batch():
    pool = ["Write a poem about the ocean at night.", "Explain how vaccines work."]
    batch = [
        "Write a poem about the ocean at night!",           # ROUGE-L 1.0 with the pool
        "Write a short poem about the ocean at night.",     # near duplicate of pool
        "Describe the life cycle of a butterfly.",          # kept
        "Describe the life cycle of a butterfly in detail.",  # near duplicate of the kept one
        " Describe the life  cycle of a butterfly.",        # exact duplicate of the kept one
        "I'm sorry, I cannot do that.",                     # refusal
        "List five uses of baking soda at home.",           # kept
        "Name three famous painters of the Renaissance.",   # kept -> reaches P = 3
        "Summarise the causes of the French Revolution.",   # surplus
    ]
    result = filter_instructions([Instruction(t, num_tokens=10) for t in batch], pool, CFG, limit=3)
    assert result.kept == [2, 6, 7]
    assert result.surplus == [8]
    assert [(i, reason_code(r)) for i, r in result.rejected] == [
        (0, "near_duplicate_pool"), (1, "near_duplicate_pool"), (3, "near_duplicate"),
        (4, "duplicate"), (5, "refusal")]
    assert result.counts == {"near_duplicate_pool": 2, "near_duplicate": 1, "duplicate": 1,
                             "refusal": 1}
    assert "Write a poem about the ocean at night." in dict(result.rejected)[1]


def test_exact_pool_duplicate_and_jaccard_option():
    pool = ["Explain how vaccines work."]
    res = filter_instructions([Instruction("Explain how  vaccines work.")], pool, CFG)
    assert reason_code(res.rejected[0][1]) == "duplicate_pool"
    # bigram Jaccard of these two is 3/5 = 0.6 (ROUGE-L would be 2·4/10 = 0.8): kept at 0.7,
    # refused at 0.6.
    cand = [Instruction("Explain how vaccines work in children.")]
    assert filter_instructions(cand, pool, FilterConfig(similarity="jaccard", max_similarity=0.7)
                               ).kept == [0]
    strict = filter_instructions(cand, pool, FilterConfig(similarity="jaccard", max_similarity=0.6))
    assert reason_code(strict.rejected[0][1]) == "near_duplicate_pool"
