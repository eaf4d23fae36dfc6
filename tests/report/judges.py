"""Rankers for tests, loaded by name through `ranking.backend: callable` like a user's function."""


def longer_is_better(prompt: str, candidates: list[str]) -> list[float]:
    """Scores each candidate by its length in characters: a judge that rewards verbosity."""
    return [float(len(c)) for c in candidates]


CALLS: list[str] = []


def counted_longer_is_better(prompt: str, candidates: list[str]) -> list[float]:
    """`longer_is_better`, recording every prompt it is asked about (in this process)."""
    CALLS.append(prompt)
    return longer_is_better(prompt, candidates)
