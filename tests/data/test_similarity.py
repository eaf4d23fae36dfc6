"""ROUGE-L and Jaccard against hand-computed values; the index agrees with brute force."""

import random
import time

import pytest

from aipo_ray.data.similarity import (
    NearDuplicateIndex,
    lcs_length,
    ngram_jaccard,
    rouge_l,
    words,
)


def test_words_are_lowercased_unicode_word_runs():
    assert words("Write a Haiku, about CAFÉ-life!") == ["write", "a", "haiku", "about", "café", "life"]


@pytest.mark.parametrize(("a", "b", "lcs"), [
    ("a b c d", "a c d", 3),
    ("a b c", "c b a", 1),
    ("", "a b", 0),
    ("x y", "p q", 0),
    ("a b a b", "b a b a", 3),
])
def test_lcs_length(a, b, lcs):
    assert lcs_length(a.split(), b.split()) == lcs == lcs_length(b.split(), a.split())


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 and 6 words: P = R = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS "write a poem" = 3; P = 3/3, R = 3/5, F = 2PR/(P+R) = 2·3/(3+5) = 0.75.
    assert rouge_l("Write a poem", "Write a short funny poem") == pytest.approx(0.75)
    # LCS "write poem" = 2; P = 2/3, R = 2/5, F = 2·2/(3+5) = 0.5.
    assert rouge_l("write poem now", "write a short funny poem") == pytest.approx(0.5)
    assert rouge_l("Same text.", "same TEXT") == 1.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    assert rouge_l("", "anything") == 0.0


def test_ngram_jaccard_hand_computed():
    # bigrams {a b, b c, c d} vs {a b, b c, c e}: 2 shared of 4 distinct.
    assert ngram_jaccard("a b c d", "a b c e", n=2) == pytest.approx(0.5)
    # unigrams {a, b, c, d} vs {a, b, c, e}: 3 of 5.
    assert ngram_jaccard("a b c d", "a b c e", n=1) == pytest.approx(0.6)
    # shorter than n: the whole text is one gram.
    assert ngram_jaccard("hello", "hello", n=3) == 1.0
    assert ngram_jaccard("", "", n=2) == 0.0


def _random_texts(rng, count, vocab):
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(count)]


@pytest.mark.parametrize("metric", ["rouge_l", "jaccard"])
def test_index_agrees_with_brute_force(metric):
    rng = random.Random(1)
    vocab = ["the", "a", "cat", "dog", "runs", "sits", "on", "mat", "big", "red"]
    pool = _random_texts(rng, 300, vocab)
    queries = _random_texts(rng, 200, vocab)
    exact = rouge_l if metric == "rouge_l" else (lambda a, b: ngram_jaccard(a, b, 2))
    index = NearDuplicateIndex(metric, threshold=0.6, ngram_size=2)
    index.add_many(pool)
    hits = 0
    for q in queries:
        best = max(exact(q, p) for p in pool)
        found = index.find(q)
        assert (found is not None) == (best >= 0.6), q
        if found is not None:
            hits += 1
            score, i = found
            assert score == pytest.approx(exact(q, pool[i])) and score >= 0.6
    assert 10 < hits < 190  # the threshold really splits the queries


def test_index_grows_with_add_between_queries():
    index = NearDuplicateIndex("rouge_l", threshold=0.7)
    assert index.find("write a poem about the sea") is None
    index.add("write a poem about the sea")
    assert index.find("Write a poem about the sea!") == (1.0, 0)
    assert index.find("explain quantum computing simply") is None
    assert len(index) == 1


def test_index_handles_a_large_pool_quickly():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)] + ["the", "a", "of", "to", "and", "write", "how"] * 40
    pool = _random_texts(rng, 20000, vocab)
    queries = _random_texts(rng, 2000, vocab) + [p + " extra" for p in pool[:50]]
    index = NearDuplicateIndex("rouge_l", threshold=0.7)
    started = time.time()
    index.add_many(pool)
    found = sum(index.find(q) is not None for q in queries)
    assert found >= 50
    assert time.time() - started < 30  # 2K candidates × 20K pool; brute-force LCS takes hours
