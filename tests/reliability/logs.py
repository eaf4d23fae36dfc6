"""Log messages of aipo-ray's own loggers, captured on those loggers.

pytest's `caplog` listens on the root logger, so it sees nothing once some library earlier in
the session has disabled or detached a logger (the full suite imports Ray, vLLM, transformers
and more into one process), and a test asserting that a message was logged then fails while
one asserting that it was not passes for nothing. A handler on the logger itself, with the
logger and its children enabled for the block, depends on none of that.
"""

from __future__ import annotations

import contextlib
import logging

STORAGE_LOGGER = "aipo_ray.storage.fs"


@contextlib.contextmanager
def captured_messages(name: str = STORAGE_LOGGER, level: int = logging.WARNING):
    """Yields the list of messages logged at `level` or above under logger `name` in the block."""
    logger = logging.getLogger(name)
    family = [logger] + [
        child for key, child in logging.root.manager.loggerDict.items()
        if key.startswith(name + ".") and isinstance(child, logging.Logger)
    ]
    messages: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())
    saved = [(lg, lg.disabled) for lg in family]
    saved_level = logger.level
    for lg in family:
        lg.disabled = False
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        for lg, disabled in saved:
            lg.disabled = disabled
