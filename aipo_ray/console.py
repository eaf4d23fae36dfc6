"""What a person sees while a run goes: one line per stage, warnings that matter, nothing else.

Everything else (Ray, Ray Data, Ray Train, vLLM, transformers, and aipo_ray's own INFO detail)
goes to `<run_dir>/logs/driver.log`; `-v` puts it on the console too. Stage lines go to the
`aipo_ray.console` logger, which the console always shows:

    iteration 1/2  generations    running
    iteration 1/2  generations    done      16 → 64 rows   41.9s

On an interactive terminal a stage that reports progress (`StageProgress`) redraws one live line
with rows done/total, rows/s, elapsed time and ETA; elsewhere (CI, `ray job logs`) it prints a
plain line at most every few seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

CONSOLE = "aipo_ray.console"
LOG_DIR = "logs"
DRIVER_LOG = "driver.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN_EVERY_S = 10.0

console = logging.getLogger(CONSOLE)
_verbose = False


def verbose() -> bool:
    """Whether the user asked for everything on the console (-v)."""
    return _verbose


class _ConsoleFilter(logging.Filter):
    """Stage lines, and warnings and errors of aipo_ray; third-party libraries only on errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == CONSOLE or record.name.startswith(CONSOLE + "."):
            return True
        if record.name.startswith("aipo_ray"):
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


def setup_logging(verbose: bool = False) -> None:
    """The console half: quiet by default, everything at INFO (DEBUG for aipo_ray) with -v."""
    global _verbose
    _verbose = verbose
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_aipo_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._aipo_console = True  # type: ignore[attr-defined]
    if verbose:
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_ConsoleFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("aipo_ray").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # library warnings become log records: to the file, not here
    _quiet_libraries(verbose)


def _quiet_libraries(verbose: bool) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_info() if verbose else hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - a dependency
        pass


def log_to_run_dir(run_dir_uri: str) -> str | None:
    """Also write every log record to `<run_dir>/logs/driver.log` (local run directories; an
    s3:// run logs to `~/.cache/aipo_ray/logs/<run name>/driver.log`). Returns the file."""
    if "://" in run_dir_uri:
        name = run_dir_uri.rstrip("/").rsplit("/", 1)[-1]
        directory = Path("~/.cache/aipo_ray/logs").expanduser() / name
    else:
        directory = Path(run_dir_uri) / LOG_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DRIVER_LOG
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        return str(path)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    return str(path)


def _interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI") is None


class StageProgress:
    """Rows done of a running stage: a live line on a terminal, sparse plain lines elsewhere."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total = label, total
        self.done = 0
        self.started = self._last_plain = time.time()
        self.live = _interactive()

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.time()
        if self.live:
            sys.stderr.write("\r" + self.line(now) + "\033[K")
            sys.stderr.flush()
        elif now - self._last_plain >= _PLAIN_EVERY_S:
            self._last_plain = now
            console.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.time()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {(self.total - self.done) / rate:.0f}s"
        return f"{self.label}  {self.done}{of} rows, {rate:.1f} rows/s, {elapsed:.0f}s{eta}"

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
