"""Rankers for tests, loaded by name through `ranking.backend: callable` like a user's function."""


def longer_is_better(prompt: str, candidates: list[str]) -> list[float]:
    """Scores each candidate by its length in characters: a judge that rewards verbosity."""
    return [float(len(c)) for c in candidates]


CALLS: list[str] = []


def counted_longer_is_better(prompt: str, candidates: list[str]) -> list[float]:
    """`longer_is_better`, recording every prompt it is asked about (in this process)."""
    CALLS.append(prompt)
    return longer_is_better(prompt, candidates)


def ties_on_odd_prompts(prompt: str, candidates: list[str]) -> list[float]:
    """A tie (no pair) for about half the prompts, chosen by a hash of the prompt's text; a
    distinct score per distinct candidate text for the others. Deterministic across processes."""
    import hashlib

    if hashlib.sha256(prompt.encode()).digest()[0] % 2:
        return [0.0] * len(candidates)
    return [float(int.from_bytes(hashlib.sha256(c.encode()).digest()[:4], "big"))
            for c in candidates]
