"""Our PairRM port gives llm-blender's own numbers (llm-blender 0.0.2, run for real on tiny random
checkpoints) at batch size 1, for both checkpoint layouts and for the awkward inputs.

Most cases use a checkpoint whose limits are 48 / 16 tokens so that truncation of sources and
candidates happens on short texts; one case checks PairRM's real 1224 / 412 on a long candidate.
"""

import numpy as np
import pytest
import torch

from aipo_ray.ranking import PairRM

WORDS = "the quick brown fox jumps over the lazy dog because"
LONG = " ".join([WORDS] * 130)  # more tokens than any budget of the real limits

PROMPTS = [
    "what is the sum of one and two?",
    "write a short poem about the sea",
    "explain [SEP] why the sky is blue",
    "please sort this list: five two four",
    " ".join([WORDS] * 6) + " so what is the answer?",  # longer than 48 tokens
]
CANDIDATES = [
    ["three", "the answer is three because one plus two", "four five"],
    ["sea sky river", "", "sea sky river"],  # an empty one and two identical ones
    ["first [SEP] second", "yes[SEP]no", "because the sea"],
    ["two four five", " ".join([WORDS] * 4), "five four two"],  # cut to its budget
    ["three", " ".join([WORDS] * 3) + " hello", "no"],  # a cut source and a cut candidate
]


def load_blender(llm_blender, path):
    bl = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    bl.loadranker(path, device="cpu")
    return bl


def blender_matrix_and_scores(bl, prompts, candidates):
    """llm-blender's comparison matrix (`_full_predict`) and `rank` scores, one prompt per batch."""
    matrices, scores = [], []
    for prompt, cands in zip(prompts, candidates, strict=True):
        batch = bl.ranker_collator([{"source": prompt, "candidates": cands}])
        with torch.no_grad():
            matrices.append(bl.ranker._full_predict(**{k: v for k, v in batch.items() if v is not None})["logits"][0])
        scores.append(bl.rank([prompt], [cands], return_scores=True, batch_size=1, disable_tqdm=True)[0])
    return torch.stack(matrices).float(), np.stack(scores)


@pytest.fixture(scope="module")
def blender(llm_blender, tiny_pairrm_short):
    return load_blender(llm_blender, tiny_pairrm_short["llm-blender"])


@pytest.fixture(scope="module")
def ours(tiny_pairrm_short):
    return {
        layout: PairRM.from_pretrained(tiny_pairrm_short[layout], batch_size=5)
        for layout in ("llm-blender", "hf")
    }


@pytest.fixture(scope="module")
def reference(blender):
    return blender_matrix_and_scores(blender, PROMPTS, CANDIDATES)


def test_the_long_inputs_are_really_truncated(ours):
    encoder = ours["llm-blender"].encoder
    assert (encoder.source_max_length, encoder.candidate_max_length) == (48, 16)
    assert len(encoder.encode_source(PROMPTS[4])) == 48
    assert encoder.candidate_budget(48) == 16
    short = len(encoder.encode_source(PROMPTS[3]))
    budget = encoder.candidate_budget(short)
    assert budget == 16 + (48 - short) // 2
    assert len(encoder.tokenizer(CANDIDATES[3][1])["input_ids"]) > budget
    assert len(encoder.encode_candidate(CANDIDATES[3][1], budget)) == budget
    assert len(encoder.tokenizer(CANDIDATES[4][1])["input_ids"]) > 16


@pytest.mark.parametrize("layout", ["llm-blender", "hf"])
def test_matrix_and_scores_equal_llm_blender_at_batch_size_1(ours, reference, layout):
    matrix, scores = reference
    assert matrix.abs().max() > 0.01  # the tolerance below is far below the values compared
    torch.testing.assert_close(ours[layout].compare_matrix(PROMPTS, CANDIDATES), matrix, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[layout].scores(PROMPTS, CANDIDATES).numpy(), scores, atol=1e-4, rtol=0)


def test_compare_equals_llm_blender_compare_in_both_modes(ours, blender):
    rm = ours["hf"]
    for prompt, (a, b, _) in zip(PROMPTS, CANDIDATES, strict=True):
        both = blender.compare([prompt], [a], [b], return_logits=True, batch_size=1, disable_tqdm=True)
        one = blender.compare([prompt], [a], [b], return_logits=True, batch_size=1, mode="[A,B]", disable_tqdm=True)
        assert rm.compare([prompt], [a], [b]).item() == pytest.approx(float(both[0]), abs=1e-4)
        assert rm.compare_pairs([prompt], [a], [b]).item() == pytest.approx(float(one[0]), abs=1e-4)


def test_llm_blender_scores_depend_on_batch_size_ours_do_not(ours, blender, reference):
    """llm-blender budgets candidates by the longest source in its batch; we budget per prompt."""
    _, per_prompt = reference
    # Batched with prompt 4 (a full 48-token source), prompt 3's long candidate is cut to 16
    # tokens instead of 16 + (48 − L) // 2.
    batched = blender.rank(PROMPTS[3:], CANDIDATES[3:], return_scores=True, batch_size=2, disable_tqdm=True)
    assert np.abs(batched[0] - per_prompt[3]).max() > 1e-3
    ours_scores = ours["llm-blender"].scores(PROMPTS[3:], CANDIDATES[3:]).numpy()
    np.testing.assert_allclose(ours_scores, per_prompt[3:], atol=1e-4, rtol=0)


def test_real_limits_1224_412_on_a_long_candidate(llm_blender, tiny_pairrm):
    """PairRM's own limits: a ~1300-token candidate is cut to 412 + (1224 − L) // 2 tokens."""
    bl = load_blender(llm_blender, tiny_pairrm["llm-blender"])
    rm = PairRM.from_pretrained(tiny_pairrm["hf"])
    prompts, candidates = ["what is the sum of one and two?"], [["three", LONG]]
    source = rm.encoder.encode_source(prompts[0])
    budget = rm.encoder.candidate_budget(len(source))
    assert budget == 412 + (1224 - len(source)) // 2
    assert len(rm.encoder.encode_candidate(LONG, budget)) == budget < len(rm.encoder.tokenizer(LONG)["input_ids"])
    matrix, scores = blender_matrix_and_scores(bl, prompts, candidates)
    torch.testing.assert_close(rm.compare_matrix(prompts, candidates), matrix, atol=1e-4, rtol=0)
    np.testing.assert_allclose(rm.scores(prompts, candidates).numpy(), scores, atol=1e-4, rtol=0)


def test_hf_layout_equals_llm_blenders_debertav2pairrm_class(tiny_pairrm_short, llm_blender):
    """The PairRM-hf layout, read by llm-blender's own DebertaV2PairRM and its tokenize_pair."""
    from llm_blender.blender.blender_utils import tokenize_pair
    from llm_blender.pair_ranker.pairrm import DebertaV2PairRM
    from transformers import AutoTokenizer

    path = tiny_pairrm_short["hf"]
    model = DebertaV2PairRM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [0, 1, 3, 4]  # tokenize_pair does not replace "[SEP]"; rows without it
    sources = [PROMPTS[k] for k in rows]
    lefts = [CANDIDATES[k][1] for k in rows]
    rights = [CANDIDATES[k][2] for k in rows]
    with torch.no_grad():
        expected = model(**tokenize_pair(tokenizer, sources, lefts, rights, 48, 16)).logits
    got = PairRM.from_pretrained(path).compare_pairs(sources, lefts, rights)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
