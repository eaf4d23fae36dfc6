"""A deadline per batch inside a Ray Data actor: retry a hung batch, then fail naming its prompts.

Ray restarts dead actors and retries their tasks, but a batch that hangs (a stuck kernel, a
deadlocked tokenizer, a user's ranker waiting on the network) never dies, so the stage and the
driver would wait forever. `call_with_deadline` runs the batch in a daemon thread and waits at
most `timeout_s`; a timed-out attempt is abandoned (Python cannot kill a thread: it keeps its CPU
until it returns, which is why the actor fails the stage after the retries instead of running on).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_SHOWN_IDS = 20


def _run_into(fn: Callable[[], object], box: dict[str, object]) -> None:
    try:
        box["value"] = fn()
    except BaseException as e:  # handed to the caller's thread
        box["error"] = e


class BatchTimeoutError(RuntimeError):
    """A batch exceeded its timeout on every attempt; the message lists its prompt ids."""


def call_with_deadline(fn: Callable[[], T], timeout_s: float, max_retries: int,
                       prompt_ids: Sequence[str], what: str) -> T:
    """`fn()`, attempted up to 1 + `max_retries` times, each allowed `timeout_s` seconds."""
    for attempt in range(1, max_retries + 2):
        box: dict[str, object] = {}
        thread = threading.Thread(target=_run_into, args=(fn, box), daemon=True,
                                  name=f"aipo-{what}-{attempt}")
        thread.start()
        thread.join(timeout_s)
        if not thread.is_alive():
            if "error" in box:
                raise box["error"]  # type: ignore[misc]
            return box["value"]  # type: ignore[return-value]
        log.warning("%s: batch of %d prompts exceeded %.1fs (attempt %d of %d)", what,
                    len(prompt_ids), timeout_s, attempt, max_retries + 1)
    raise BatchTimeoutError(
        f"{what}: a batch of {len(prompt_ids)} prompts exceeded timeout_s={timeout_s:g} on "
        f"{max_retries + 1} attempts; prompt ids: {few_ids(prompt_ids)}"
    )


def few_ids(ids: Sequence[str], limit: int = _SHOWN_IDS) -> str:
    """The first `limit` ids for an error message, and how many more there are."""
    ids = list(ids)
    return ", ".join(ids[:limit]) + (f", ... (+{len(ids) - limit})" if len(ids) > limit else "")
