"""vLLM's engine inside the calling process, behind the async calls an `EngineActor` makes.

vLLM's `AsyncLLM` always runs its EngineCore in a spawned process, and on CPU vLLM also forces
its worker into one more (the multiprocessing executor: it pins that process's OpenMP
threads). Each of those interpreters imports torch, transformers and vLLM again before it
loads a single weight: on 2 CPU cores an engine took 41-46 s to start, against 11 s for the same
engine with both in the caller's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, which lets the
single-process executor through), at the same tokens/s (docs/performance.md). In-process there
are no shared-memory queues to leave in /dev/shm and no child to stop at shutdown either.

`LLMEngine` is synchronous: `add_request`, then `step()` until the requests finish. Here one
asyncio task steps it while any request is pending, on one dedicated thread (so the actor's
event loop keeps taking calls, and every vLLM call, construction included, runs on the thread
whose OpenMP threads vLLM pinned), and requests that arrive while a step runs join the batch
at the next step, as they would in AsyncLLM's scheduler. A lock keeps `collective_rpc` (a
weight reload) from running between the steps of a batch.

Used where one engine serves one worker on CPU (`EngineActor`, in_process=True); on GPUs
AsyncLLM's separate process keeps the scheduler off the device's critical path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

class InProcessEngine:
    """The part of AsyncLLM's interface an `EngineActor` uses: `generate`, `collective_rpc`,
    `reset_prefix_cache`, `shutdown`. It sets the process-wide vLLM and OpenMP settings it
    needs, so it belongs in a process of its own (an engine actor)."""

    def __init__(self, engine_args: Any):
        import vllm

        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-engine")
        self.engine = self._thread.submit(_build, vllm, engine_args).result()
        self._waiting: dict[str, asyncio.Future] = {}
        self._to_add: list[tuple[str, dict[str, Any], Any, asyncio.Future]] = []
        self._stepper: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.error: BaseException | None = None  # what stopped the engine, if anything did

    async def generate(self, request_id: str, prompt: dict[str, Any], sampling_params: Any):
        """Like AsyncLLM's: yields the request's `RequestOutput`, here only the final one."""
        yield await self._complete(request_id, prompt, sampling_params)

    async def _complete(self, request_id: str, prompt: dict[str, Any], params: Any) -> Any:
        if self.error is not None:
            raise RuntimeError(f"the vLLM engine stopped on an earlier error: {self.error!r}")
        future = asyncio.get_running_loop().create_future()
        self._to_add.append((request_id, prompt, params, future))
        if self._stepper is None or self._stepper.done():
            self._stepper = asyncio.create_task(self._step_while_pending())
        return await future

    async def collective_rpc(self, method: str, kwargs: dict[str, Any]) -> list[Any]:
        async with self._engine_lock():
            return await self._run(self.engine.collective_rpc, method, kwargs=kwargs)

    async def reset_prefix_cache(self) -> bool:
        async with self._engine_lock():
            return await self._run(self.engine.reset_prefix_cache)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the engine core (its executor, the model's memory) and the stepping thread."""
        engine, self.engine = self.engine, None
        if engine is not None:
            self._thread.submit(engine.engine_core.shutdown).result(timeout=timeout)
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _step_while_pending(self) -> None:
        while self._to_add or self._waiting:
            async with self._engine_lock():
                adds, self._to_add = self._to_add, []
                for request_id, _, _, future in adds:
                    self._waiting[request_id] = future
                try:
                    outputs, refused = await self._run(self._add_and_step, adds)
                except BaseException as e:  # the engine's state is unknown now: fail everyone
                    self.error = e
                    log.error("the in-process vLLM engine failed: %r", e)
                    self._fail_all(e)
                    return
            for request_id, error in refused.items():
                _settle(self._waiting.pop(request_id, None), error=error)
            for output in outputs:
                if output.finished:
                    _settle(self._waiting.pop(output.request_id, None), result=output)

    def _add_and_step(self, adds: list) -> tuple[list[Any], dict[str, BaseException]]:
        """On the engine thread: add the new requests (one refused, say too long a prompt,
        fails only its own caller), then run one engine step."""
        refused = {}
        for request_id, prompt, params, _ in adds:
            try:
                self.engine.add_request(request_id, prompt, params)
            except Exception as e:
                refused[request_id] = e
        outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
        return outputs, refused

    def _fail_all(self, error: BaseException) -> None:
        pending = [f for *_, f in self._to_add] + list(self._waiting.values())
        self._to_add, self._waiting = [], {}
        for future in pending:
            _settle(future, error=error)

    def _engine_lock(self) -> asyncio.Lock:
        if self._lock is None:  # made on the actor's event loop, at first use
            self._lock = asyncio.Lock()
        return self._lock

    async def _run(self, fn, *args, **kwargs) -> Any:
        if self.engine is None:
            raise RuntimeError("the vLLM engine has been shut down")
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: fn(*args, **kwargs))


def _build(vllm: Any, engine_args: Any) -> Any:
    """The engine, built on the thread that will step it, with as many OpenMP threads as vLLM
    gives its own CPU worker process. That process gets them through its environment at spawn
    (OMP_NUM_THREADS: the cores of its NUMA node less the reserved ones); here OpenMP started
    long ago, under Ray's OMP_NUM_THREADS (the actor's CPU reservation, often 1: half the
    speed on 2 cores), and an OpenMP thread count belongs to the thread that sets it."""
    import torch
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    # Read when the config is made (CPU executor choice) and when the engine is (EngineCore
    # in this process, not a spawned one).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    config = engine_args.create_engine_config()
    cpu_lists = OMPProcessManager(config).cpu_lists
    if cpu_lists:
        threads = len(cpu_lists[0])
        # Read again by vLLM, which would otherwise cut the engine to 1 thread "for serving".
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        log.info("in-process vLLM engine: %d OpenMP threads (cores %s)", threads, cpu_lists[0])
    return vllm.LLMEngine.from_vllm_config(config, disable_log_stats=engine_args.disable_log_stats)


def _settle(future: asyncio.Future | None, result: Any = None,
            error: BaseException | None = None) -> None:
    if future is None or future.done():
        return
    with contextlib.suppress(asyncio.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
