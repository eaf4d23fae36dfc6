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

import io
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

CONSOLE = "aipo_ray.console"
LOG_DIR = "logs"
DRIVER_LOG = "driver.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN_EVERY_S = 15.0

console = logging.getLogger(CONSOLE)
_verbose = False
# Set by the `aipo` command (not by the Python API or tests): the process's own stderr, file
# descriptor 2, then goes to the driver log too, so output that bypasses Python logging (Ray's
# C++ core worker, native libraries, tracebacks printed by threads) stays off the console.
_capture_native = False
_console_stream = None  # the terminal's stderr once fd 2 points at the log file
_saved_stderr_fd: int | None = None
_saved_stdout = None  # sys.stdout before Ray's prefixed lines were routed to the log
# Ray's driver prints what the raylet and workers report ("(raylet) Task ... failed", "(pid=...)")
# to sys.stdout with a colored "(name)" prefix; such lines belong in the log.
_RAY_LINE = re.compile(r"^(\x1b\[[0-9;]*m)*\((raylet|autoscaler|[^\n]*?pid=\d+)")


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


def setup_logging(verbose: bool = False, capture_native: bool = False) -> None:
    """The console half: quiet by default, everything at INFO (DEBUG for aipo_ray) with -v.

    `capture_native` (the `aipo` command without -v): once a run's log file is known
    (`log_to_run_dir`), file descriptor 2 is pointed at it and the console keeps the terminal.
    """
    global _verbose, _capture_native
    _verbose = verbose
    _capture_native = capture_native and not verbose
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ConsoleHandler):
            root.removeHandler(handler)
    handler = _ConsoleHandler()
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


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the console stream of the moment, never to one fixed at setup: an in-process
    caller (a test, a notebook) swaps and closes sys.stderr after `aipo` returned, and the
    `aipo` command moves the console to a duplicate of the terminal once fd 2 goes to the log."""

    def __init__(self) -> None:
        super().__init__(console_stream())

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = console_stream()
        super().emit(record)

    def flush(self) -> None:
        self.stream = console_stream()
        super().flush()


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
    if _capture_native:
        _redirect_stderr_fd(path)
    return str(path)


def console_stream():
    """Where console output goes: the terminal's stderr, also after fd 2 was redirected."""
    return _console_stream or sys.stderr


def _redirect_stderr_fd(path: Path) -> None:
    """Point fd 2 at `path`; console handlers keep a duplicate of the terminal's descriptor."""
    global _console_stream, _saved_stderr_fd, _saved_stdout
    if _saved_stderr_fd is not None:
        return
    sys.stderr.flush()
    _saved_stderr_fd = os.dup(2)
    _console_stream = os.fdopen(os.dup(_saved_stderr_fd), "w", buffering=1,
                                encoding="utf-8", errors="replace")
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    _saved_stdout = sys.stdout
    sys.stdout = _RayLinesToLog(sys.stdout, sys.stderr)


class _RayLinesToLog(io.TextIOBase):
    """sys.stdout that passes our lines to the terminal and Ray's prefixed ones to the log."""

    def __init__(self, terminal, log):
        self.terminal, self.log, self._line = terminal, log, ""

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            (self.log if _RAY_LINE.match(line) else self.terminal).write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._line:
            (self.log if _RAY_LINE.match(self._line) else self.terminal).write(self._line)
            self._line = ""
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()


def restore_stderr() -> None:
    """Undo `_redirect_stderr_fd` (the end of an `aipo` command)."""
    global _console_stream, _saved_stderr_fd, _saved_stdout
    if _saved_stderr_fd is None:
        return
    if _saved_stdout is not None:
        sys.stdout.flush()
        sys.stdout, _saved_stdout = _saved_stdout, None
    sys.stderr.flush()
    os.dup2(_saved_stderr_fd, 2)
    os.close(_saved_stderr_fd)
    terminal, _console_stream, _saved_stderr_fd = _console_stream, None, None
    if terminal is not None:  # handlers already read sys.stderr again
        terminal.close()


def _interactive() -> bool:
    return console_stream().isatty() and os.environ.get("CI") is None


def describe_progress(snapshot: dict) -> str:
    """'6/10 prompts, 0.2 prompts/s, 10s, ETA 20s' from a `StageProgress.snapshot()` (the live
    line, and `aipo status` reading a stage's `_PROGRESS`)."""
    unit = snapshot.get("unit", "rows")
    of = f"/{snapshot['total']}" if snapshot.get("total") else ""
    eta = "" if snapshot.get("eta_s") is None else f", ETA {snapshot['eta_s']:.0f}s"
    return (f"{snapshot['done']:g}{of} {unit}, {snapshot.get('per_s', 0):.1f} {unit}/s, "
            f"{snapshot.get('elapsed_s', 0):.0f}s{eta}")


class StageProgress:
    """Rows done of a running stage: a live line on a terminal, sparse plain lines elsewhere.

    `report`, when given, receives `snapshot()` at most every `report_every_s` seconds and at
    the end (the runner writes it to the stage's `_PROGRESS` for `aipo status`).
    """

    def __init__(self, label: str, total: int | None, done: int = 0,
                 report: Callable[[dict], None] | None = None, report_every_s: float = 5.0,
                 unit: str = "rows"):
        self.label, self.total, self.unit = label, total, unit
        self.done = self._first = done  # rows committed by an earlier run count as done
        self.started = self._last_plain = self._last_report = time.time()
        self.live = _interactive()
        self.report, self.report_every_s = report, report_every_s

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.time()
        if self.live:
            console_stream().write("\r" + self.line(now) + "\033[K")
            console_stream().flush()
        elif now - self._last_plain >= _PLAIN_EVERY_S:
            self._last_plain = now
            console.info(self.line(now))
        if self.report is not None and now - self._last_report >= self.report_every_s:
            self._last_report = now
            self.report(self.snapshot(now))

    def rate(self, now: float | None = None) -> float:
        elapsed = (now or time.time()) - self.started
        return (self.done - self._first) / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        if not self.total or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def snapshot(self, now: float | None = None) -> dict:
        now = now or time.time()
        eta = self.eta_s(now)
        return {"unit": self.unit, "done": self.done, "total": self.total,
                "per_s": round(self.rate(now), 3),
                "elapsed_s": round(now - self.started, 1),
                "eta_s": None if eta is None else round(eta, 1), "updated_at": now}

    def line(self, now: float | None = None) -> str:
        return f"{self.label}  {describe_progress(self.snapshot(now))}"

    def close(self) -> None:
        if self.live:
            console_stream().write("\r\033[K")
            console_stream().flush()
        if self.report is not None:
            self.report(self.snapshot())
