"""A vLLM general plugin: our engines' processes skip the heap scan of interpreter exit.

vLLM's EngineCore and worker are spawned interpreters that import torch, transformers and vLLM
(millions of objects). At exit, Python's finalisation runs full garbage collections over all of
them before the process ends; on 2 CPU cores that took about 5 s in the worker (vLLM's grace
period for a worker to exit, after which it is sent SIGTERM) and 3 s in EngineCore, so releasing
an engine took 10.5 s, 9 of them spent collecting garbage the exiting process was about to hand
back to the OS whole (py-spy: both processes in `gc_collect_main` after their last Python
frame). Freezing the heap at exit (`gc.freeze`, registered with atexit, which runs before those
collections) leaves them nothing to scan; vLLM's own teardown (sockets, shared-memory queues,
worker stop) has finished by then. The objects left alive make Triton's nanobind bindings report
"leaked instances/types/functions" as the interpreter ends, a report about memory the OS takes
back a moment later: standard error is pointed at /dev/null after the freeze so that it does not
reach the engine's log, or the console of a Python API user (Ray forwards worker stderr).

vLLM loads every installed `vllm.general_plugins` entry point in each of its processes, so the
plugin acts only where `AIPO_VLLM_FAST_EXIT=1` is set: the environment of the engines aipo-ray
starts (`vllm_engine.engine_env`), never someone else's vLLM server on the same machine.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

FAST_EXIT_ENV = "AIPO_VLLM_FAST_EXIT"
_registered = False


def register() -> None:
    """vLLM's entry point (`vllm.general_plugins`); it may be called more than once."""
    global _registered
    if os.environ.get(FAST_EXIT_ENV) == "1" and not _registered:
        atexit.register(_skip_final_collections)
        _registered = True


def _skip_final_collections() -> None:
    gc.freeze()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
