"""Near-duplicate detection for self-instruct: ROUGE-L F (Wang et al. 2023) or word n-gram Jaccard.

Self-instruct checks every new instruction against the whole pool (tens of thousands of prompts)
and against the instructions already kept. An exact LCS against every pool entry is quadratic in
Python, so `NearDuplicateIndex` first bounds the score with an inverted index over words, in
numpy, and runs the LCS only where the bound can reach the threshold:

    LCS(a, b) <= |words(a) ∩ words(b)|  (as multisets)  =>  ROUGE-L F <= 2·overlap / (|a| + |b|)

The multiset intersection is counted exactly by indexing each word with its occurrence number
("the#1", "the#2"), so a set intersection of those features is the multiset intersection. For
Jaccard the same index gives the exact score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# Unicode-aware words, lowercased. rouge_score keeps only [a-z0-9]; that would make every
# non-English instruction an empty string and a "duplicate" of every other.
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one DP row, O(len(a)·len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str | Sequence[str], reference: str | Sequence[str]) -> float:
    """ROUGE-L F1 on words: 2·P·R / (P + R) with P = LCS/|candidate|, R = LCS/|reference|."""
    a = words(candidate) if isinstance(candidate, str) else candidate
    b = words(reference) if isinstance(reference, str) else reference
    lcs = lcs_length(a, b)
    return 0.0 if lcs == 0 else 2.0 * lcs / (len(a) + len(b))


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n is one gram, so short texts still compare."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def ngram_jaccard(a: str, b: str, n: int = 2) -> float:
    """|A ∩ B| / |A ∪ B| over the word n-gram sets of a and b (0 when both are empty)."""
    ga, gb = ngrams(words(a), n), ngrams(words(b), n)
    union = len(ga | gb)
    return len(ga & gb) / union if union else 0.0


class NearDuplicateIndex:
    """Texts indexed to answer "is this within `threshold` of anything indexed?" quickly.

    `metric` is "rouge_l" or "jaccard"; scores are in [0, 1] and a text is a near-duplicate when
    its best score is >= threshold.
    """

    def __init__(self, metric: str = "rouge_l", threshold: float = 0.7, ngram_size: int = 2):
        if metric not in ("rouge_l", "jaccard"):
            raise ValueError(f"unknown similarity {metric!r}; use rouge_l or jaccard")
        self.metric, self.threshold, self.ngram_size = metric, threshold, ngram_size
        self._vocab: dict[object, int] = {}
        self._postings: dict[int, np.ndarray] = {}
        self._pending: dict[int, list[int]] = {}
        self._words: list[list[str]] = []
        self._sizes: list[int] = []
        self._texts: list[str] = []
        self._sizes_arr: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._texts)

    def _features(self, tokens: list[str]) -> list[object]:
        if self.metric == "jaccard":
            return list(ngrams(tokens, self.ngram_size))
        seen: dict[str, int] = {}
        out = []
        for t in tokens:
            seen[t] = seen.get(t, 0) + 1
            out.append((t, seen[t]))
        return out

    def add(self, text: str) -> None:
        tokens = words(text)
        feats = self._features(tokens)
        doc = len(self._texts)
        self._texts.append(text)
        self._words.append(tokens)
        self._sizes.append(len(feats))
        for f in feats:
            fid = self._vocab.setdefault(f, len(self._vocab))
            self._pending.setdefault(fid, []).append(doc)

    def add_many(self, texts: Sequence[str]) -> None:
        for t in texts:
            self.add(t)

    def _posting(self, fid: int) -> np.ndarray:
        # Additions are buffered as lists and merged on first use, so interleaved add/query
        # (the greedy keep loop) stays cheap.
        pending = self._pending.pop(fid, None)
        arr = self._postings.get(fid)
        if pending:
            new = np.asarray(pending, dtype=np.int64)
            arr = new if arr is None else np.concatenate([arr, new])
            self._postings[fid] = arr
        return arr if arr is not None else np.empty(0, dtype=np.int64)

    def _size_array(self) -> np.ndarray:
        if self._sizes_arr is None or len(self._sizes_arr) != len(self._sizes):
            self._sizes_arr = np.asarray(self._sizes, dtype=np.float64)
        return self._sizes_arr

    def overlaps(self, text: str) -> tuple[list[str], int, np.ndarray]:
        """(words of text, its feature count, shared-feature count with every indexed text)."""
        tokens = words(text)
        fids = [self._vocab[f] for f in self._features(tokens) if f in self._vocab]
        n = len(self._texts)
        if not fids or n == 0:
            return tokens, len(self._features(tokens)), np.zeros(n, dtype=np.int64)
        hits = np.concatenate([self._posting(f) for f in fids])
        return tokens, len(self._features(tokens)), np.bincount(hits, minlength=n)

    def find(self, text: str) -> tuple[float, int] | None:
        """(score, index) of an indexed text scoring >= threshold against `text`, else None.

        ROUGE-L candidates are tried best bound first and the first one reaching the threshold is
        returned: deciding needs one match, not the exact maximum.
        """
        tokens, size, overlap = self.overlaps(text)
        if len(self._texts) == 0 or size == 0:
            return None
        sizes = self._size_array()
        if self.metric == "jaccard":
            scores = overlap / np.maximum(size + sizes - overlap, 1)
            best = int(np.argmax(scores))
            return (float(scores[best]), best) if scores[best] >= self.threshold else None
        bound = 2.0 * overlap / (size + sizes)
        order = np.flatnonzero(bound >= self.threshold - 1e-12)
        order = order[np.argsort(-bound[order], kind="stable")]
        for idx in order:
            score = rouge_l(tokens, self._words[idx])
            if score >= self.threshold:
                return score, int(idx)
        return None

    def text(self, index: int) -> str:
        return self._texts[index]
