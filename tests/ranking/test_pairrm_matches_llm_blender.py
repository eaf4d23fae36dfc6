"""Our PairRM port gives llm-blender's own numbers (llm-blender 0.0.2, run for real on a tiny
random checkpoint) at batch size 1, for both checkpoint layouts and for the awkward inputs."""

import numpy as np
import pytest
import torch

from aipo_ray.ranking import PairRM

LONG = " ".join(["the quick brown fox jumps over the lazy dog because"] * 130)  # > 1224 tokens

PROMPTS = [
    "what is the sum of one and two?",
    "write a short poem about the sea",
    "explain [SEP] why the sky is blue",
    "please sort this list: five two four",
    LONG + " so what is the answer?",
]
CANDIDATES = [
    ["three", "the answer is three because one plus two", "four five"],
    ["sea sky river", "", "sea sky river"],  # an empty one and two identical ones
    ["first [SEP] second", "yes[SEP]no", "because the sea"],
    ["two four five", LONG, "five four two"],  # a candidate truncated to its budget
    ["three", LONG + " hello", "no"],  # a truncated source and a truncated candidate
]


@pytest.fixture(scope="module")
def blender(llm_blender, tiny_pairrm):
    bl = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    bl.loadranker(tiny_pairrm["llm-blender"], device="cpu")
    return bl


@pytest.fixture(scope="module")
def ours(tiny_pairrm):
    return {layout: PairRM.from_pretrained(tiny_pairrm[layout], batch_size=5) for layout in ("llm-blender", "hf")}


@pytest.fixture(scope="module")
def reference(blender):
    """llm-blender's comparison matrix and scores, one prompt per batch."""
    matrices, scores = [], []
    for prompt, cands in zip(PROMPTS, CANDIDATES, strict=True):
        batch = blender.ranker_collator([{"source": prompt, "candidates": cands}])
        batch = {k: v for k, v in batch.items() if v is not None}
        with torch.no_grad():
            matrices.append(blender.ranker._full_predict(**batch)["logits"][0])
        scores.append(blender.rank([prompt], [cands], return_scores=True, batch_size=1, disable_tqdm=True)[0])
    return torch.stack(matrices), np.stack(scores)


def test_the_long_inputs_are_really_truncated(ours):
    encoder = ours["llm-blender"].encoder
    source = encoder.encode_source(PROMPTS[4])
    assert len(source) == 1224
    short = len(encoder.encode_source(PROMPTS[3]))
    budget = encoder.candidate_budget(short)
    assert budget == 412 + (1224 - short) // 2
    assert len(encoder.tokenizer(LONG)["input_ids"]) > budget
    assert len(encoder.encode_candidate(LONG, budget)) == budget
    assert encoder.candidate_budget(len(source)) == 412


@pytest.mark.parametrize("layout", ["llm-blender", "hf"])
def test_matrix_and_scores_equal_llm_blender_at_batch_size_1(ours, reference, layout):
    matrix, scores = reference
    assert matrix.abs().max() > 0.01  # the tolerance below is far below the values compared
    ours_matrix = ours[layout].compare_matrix(PROMPTS, CANDIDATES)
    torch.testing.assert_close(ours_matrix, matrix.float(), atol=1e-4, rtol=0)
    ours_scores = ours[layout].scores(PROMPTS, CANDIDATES).numpy()
    np.testing.assert_allclose(ours_scores, scores, atol=1e-4, rtol=0)


def test_compare_equals_llm_blender_compare_in_both_modes(ours, blender):
    rm = ours["hf"]
    a = [c[0] for c in CANDIDATES]
    b = [c[1] for c in CANDIDATES]
    for k, prompt in enumerate(PROMPTS):
        both = blender.compare([prompt], [a[k]], [b[k]], return_logits=True, batch_size=1, disable_tqdm=True)
        one = blender.compare(
            [prompt], [a[k]], [b[k]], return_logits=True, batch_size=1, mode="[A,B]", disable_tqdm=True
        )
        assert rm.compare([prompt], [a[k]], [b[k]]).item() == pytest.approx(float(both[0]), abs=1e-4)
        assert rm.compare_pairs([prompt], [a[k]], [b[k]]).item() == pytest.approx(float(one[0]), abs=1e-4)


def test_llm_blender_scores_depend_on_batch_size_ours_do_not(ours, blender, reference):
    """llm-blender budgets candidates by the longest source in its batch; we budget per prompt."""
    _, per_prompt = reference
    batched = blender.rank(PROMPTS, CANDIDATES, return_scores=True, batch_size=5, disable_tqdm=True)
    assert np.abs(batched[3] - per_prompt[3]).max() > 1e-3  # prompt 3's long candidate got cut more
    ours_scores = ours["llm-blender"].scores(PROMPTS, CANDIDATES).numpy()
    np.testing.assert_allclose(ours_scores[3], per_prompt[3], atol=1e-4, rtol=0)


def test_hf_layout_equals_llm_blenders_debertav2pairrm_class(ours, tiny_pairrm, llm_blender):
    """The PairRM-hf layout, read by llm-blender's own DebertaV2PairRM and its tokenize_pair."""
    from llm_blender.blender.blender_utils import tokenize_pair
    from llm_blender.pair_ranker.pairrm import DebertaV2PairRM
    from transformers import AutoTokenizer

    model = DebertaV2PairRM.from_pretrained(tiny_pairrm["hf"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_pairrm["hf"])
    rows = [0, 1, 3]  # tokenize_pair does not replace "[SEP]"; rows without it
    sources = [PROMPTS[k] for k in rows]
    lefts = [CANDIDATES[k][1] for k in rows]
    rights = [CANDIDATES[k][2] for k in rows]
    with torch.no_grad():
        expected = model(**tokenize_pair(tokenizer, sources, lefts, rights)).logits
    got = ours["hf"].compare_pairs(sources, lefts, rights)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
