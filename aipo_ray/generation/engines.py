"""vLLM engines shared by the stages of an iteration: started once, shut down cleanly.

`ray.data.llm` starts an engine for every Dataset it runs and kills it when the Dataset is done:
self-instruct and the generations stage of one iteration each paid a full start-up (Ray worker
imports vLLM, vLLM spawns its EngineCore and worker processes which import it again, then load
the model) for the same θ_t, and the killed engine never ran vLLM's shutdown, so every engine
left a `/dev/shm/psm_*` segment behind and its resource tracker printed `KeyError: '/psm_...'`.

Here an engine is a Ray actor (`EngineActor`) owning one vLLM engine, built with the same
`engine_kwargs`, environment and resources as the `ray.data.llm` path would use. On CPU the
engine runs inside the actor's process (inprocess_engine.py: no EngineCore or worker process
to spawn, each importing vLLM again; a start takes about 11 s instead of 41-46 s on 2 cores).
The driver keeps them in a cache keyed by everything that determines them (resolved model path, engine
kwargs, env, resources, replicas): a second `generate` with the same model and settings reuses
the engines; one with another key releases the held engines first (one set at a time, so a
changed θ_t never waits for CPUs the old engine holds).

    actors = shared_engines(path, kwargs, env, bundle, num_replicas)   # started or reused
    release_engines()       # engines stopped (EngineCore and workers exit), actors gone

A held engine also serves another model of the same family (same architecture config,
tokenizer and generation defaults: `weights_family`), as `aipo eval` and `aipo compare` ask of
it when they answer with θ_0, θ_1, ... in turn: instead of a new start-up (about a minute on 2
CPU cores) vLLM reloads the weights in place (`reload_weights`, a second or two for 135M
parameters). Every request block names the model it was built for and the engine switches to
it first, waiting for the blocks in flight, so a block can never be answered by other weights
than its own, whatever order the blocks arrive in.

`release_engines()` runs at driver exit (atexit) too; the pipeline runner calls it before any
stage that asks for resources and does not generate with θ_t, at the end of each iteration and
of the run, and when a stage fails.

Only single-worker engines (tensor_parallel_size 1, on CPU or one GPU) are shared; larger ones
keep the `ray.data.llm` path, whose placement groups span several bundles.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import ray

log = logging.getLogger(__name__)

# How long a clean engine shutdown may take before the actor is killed regardless.
SHUTDOWN_TIMEOUT_S = 60.0
# vLLM waits this long for its EngineCore to exit after SIGTERM before it kills it.
_CORE_EXIT_TIMEOUT_S = 10.0


class EngineActor:
    """One vLLM engine in an async Ray actor: `generate` runs a block of requests, `shutdown`
    stops it.

    The engine is vLLM's AsyncLLM (as in ray.data.llm), or on CPU its LLMEngine in this process
    (`in_process`, inprocess_engine.py): either way blocks in flight at the same time are
    batched together by its scheduler. Requests are the rows `vllm_engine._requests` builds
    (prompt token ids, candidate seeds); sampling parameters come from
    `vllm_engine._to_request` and rows from `_to_row`, exactly as on the `ray.data.llm` path,
    so the same requests give the same candidates.
    """

    def __init__(self, model_path: str, engine_kwargs: dict[str, Any], in_process: bool = False):
        import vllm

        from .inprocess_engine import InProcessEngine
        from .vllm_worker import EXTENSION

        self.started = time.time()
        kwargs = {"model": model_path, "worker_extension_cls": EXTENSION, **engine_kwargs}
        self.engine = (InProcessEngine(vllm.EngineArgs(**kwargs)) if in_process
                       else vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kwargs)))
        self.model_path = model_path  # whose weights the engine holds
        self.switching = False
        self.in_flight = 0
        self.calls = 0
        self.requests = 0
        self.reloads = 0

    async def generate(self, model_path: str, requests: pa.Table, sampling: Any,
                       per_request_seed: bool, eos_ids: list[int], schema: pa.Schema
                       ) -> pa.Table:
        """Candidates for `requests` from the weights of `model_path` (switched to first)."""
        import asyncio

        from .vllm_engine import _to_row

        await self._hold(model_path)
        try:
            self.calls += 1
            rows = requests.to_pylist()
            completions = await asyncio.gather(*(self._one(r, sampling, per_request_seed)
                                                 for r in rows))
        finally:
            self.in_flight -= 1
        out = [_to_row({**row, "generated_text": c.text, "generated_tokens": list(c.token_ids)},
                       eos_ids=eos_ids, max_tokens=sampling.max_tokens)
               for row, c in zip(rows, completions, strict=True)]
        if not out:
            return schema.empty_table()
        return pa.Table.from_pylist(out).select(schema.names).cast(schema)

    async def load(self, model_path: str) -> float:
        """Switch the engine to the weights of `model_path`; returns the seconds it took."""
        started = time.monotonic()
        await self._hold(model_path)
        self.in_flight -= 1
        return time.monotonic() - started

    async def _hold(self, model_path: str) -> None:
        """Wait until the engine holds `model_path`'s weights and count one call in flight.

        A switch waits for the calls in flight (they keep the weights they started with) and
        holds new calls back until it is done. The checks and the count run without an `await`
        between them, so on the actor's one event loop nothing slips in between.
        """
        import asyncio

        while self.model_path != model_path or self.switching:
            if self.switching or self.in_flight:
                await asyncio.sleep(0.05)
                continue
            self.switching = True
            try:
                await self._reload(model_path)
            finally:
                self.switching = False
        self.in_flight += 1

    async def _reload(self, model_path: str) -> None:
        # In place, from the new directory's safetensors (vllm_worker.py: vLLM's reload, then
        # the tied layers it leaves stale on CPU), then the prefix cache, whose KV blocks the
        # old weights computed.
        await self.engine.collective_rpc("reload_weights_and_ties",
                                         kwargs={"weights_path": model_path})
        await self.engine.reset_prefix_cache()
        self.model_path = model_path
        self.reloads += 1

    async def _one(self, row: dict[str, Any], sampling: Any, per_request_seed: bool) -> Any:
        from vllm import SamplingParams

        from .vllm_engine import _to_request

        params = SamplingParams(**_to_request(row, sampling, per_request_seed)["sampling_params"])
        request_id = f"aipo-{self.requests}"
        self.requests += 1
        final = None
        async for output in self.engine.generate(
                request_id=request_id, sampling_params=params,
                prompt={"prompt_token_ids": [int(t) for t in row["tokenized_prompt"]]}):
            final = output
        if final is None or not final.finished:
            raise RuntimeError(f"vLLM ended request {row['prompt_id']} without finishing it")
        return final.outputs[0]

    def info(self) -> dict[str, Any]:
        """The actor's pid, its live descendant processes (EngineCore, workers, vLLM's resource
        tracker), the /dev/shm segments they map, and the calls served."""
        procs = _descendants(os.getpid())
        return {"pid": os.getpid(), "children": procs, "calls": self.calls,
                "model": self.model_path, "reloads": self.reloads,
                "started": self.started, "shm": _shm_mapped([os.getpid(), *procs])}

    def shutdown(self) -> dict[str, Any]:
        """Stop the engine the way vLLM does: SIGTERM to EngineCore (which stops its workers),
        wait, close the sockets and unlink the shared-memory queues; in process, free the model
        and KV cache. Returns what was stopped."""
        children = _children(os.getpid())
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown(timeout=_CORE_EXIT_TIMEOUT_S)
            self.engine = None
            import gc

            gc.collect()  # drops the MessageQueue buffers this process created (their __del__)
        return {"pid": os.getpid(), "children": children, "left": _children(os.getpid())}


def _descendants(pid: int) -> list[int]:
    out = []
    for kid in _children(pid):
        out += [kid, *_descendants(kid)]
    return out


def _shm_mapped(pids: list[int]) -> list[str]:
    """Names of the /dev/shm files that these processes map (Linux; [] elsewhere)."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                names.update(line.split("/dev/shm/", 1)[1].split()[0]
                             for line in f if "/dev/shm/" in line)
        except OSError:
            continue
    return sorted(names)


def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of `pid`, from /proc (Linux); [] elsewhere."""
    kids = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")  # each thread lists the children it started
    except OSError:
        return []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    alive = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(kid)
    return alive


@dataclass
class _EngineSet:
    key: str
    model_path: str  # the weights its engines hold (or are switching to)
    actors: list = field(default_factory=list)
    # One `info` call per actor, queued behind its constructor: done when the engine is up.
    ready: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


# CPU engines run inside their actor (inprocess_engine.py); False gives them AsyncLLM's EngineCore
# and worker processes, as on GPUs (benchmarks/engine_start.py compares the two).
IN_PROCESS_ON_CPU = True

_lock = threading.RLock()
_held: dict[str, _EngineSet] = {}
_starts = 0
_reloads = 0
_atexit_registered = False

# What must be equal for one engine to serve two models: the architecture, the tokenizer it
# detokenizes with (vLLM loads it once, at start) and the sampling defaults vLLM reads.
_FAMILY_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "vocab.json", "merges.txt", "tokenizer.model")
# config.json fields that name where a checkpoint came from, not what it is.
_PROVENANCE_FIELDS = ("_name_or_path", "transformers_version")


def weights_family(model_path: str, tokenizer_path: str | None = None) -> str:
    """Fingerprint of everything but the weights that a vLLM engine takes from a model
    directory; two directories with the same family can share one engine. A path that is
    not a local directory (a hub name) is its own family.

    Every `generate` call asks for it, so the files are read once per version: the digest is
    cached under their names, sizes and modification times."""
    directories = [model_path, tokenizer_path or model_path]
    if not all(os.path.isdir(d) for d in directories):
        return json.dumps({"model": model_path, "tokenizer": tokenizer_path})
    return _family_digest(tuple((role, directory, _family_files(directory))
                                for role, directory in zip(("model", "tokenizer"), directories,
                                                           strict=True)))


def _family_files(directory: str) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the family files present in `directory`."""
    found = []
    for name in _FAMILY_FILES:
        try:
            stat = os.stat(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        found.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


@functools.lru_cache(maxsize=64)
def _family_digest(sources: tuple[tuple[str, str, tuple], ...]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for role, directory, files in sources:
        for name, _, _ in files:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
            if name == "config.json":
                config = json.loads(data)
                for key in _PROVENANCE_FIELDS:
                    config.pop(key, None)
                data = json.dumps(config, sort_keys=True).encode()
            digest.update(f"{role}/{name}:{len(data)}:".encode() + data)
    return digest.hexdigest()


def engine_key(model_path: str, engine_kwargs: dict[str, Any], env: dict[str, str],
               bundle: dict[str, float], num_replicas: int) -> str:
    """Everything that determines an engine set but its weights, as one string (the cache
    key): the model enters through its `weights_family` only."""
    kwargs = {k: v for k, v in engine_kwargs.items() if k != "tokenizer"}
    # A worker extension of the user's replaces ours (vllm_worker.py): no reloads then.
    family = (weights_family(model_path, engine_kwargs.get("tokenizer"))
              if "worker_extension_cls" not in engine_kwargs else model_path)
    return json.dumps({"family": family,
                       "engine_kwargs": kwargs, "env": env, "bundle": bundle,
                       "num_replicas": num_replicas}, sort_keys=True, default=str)


def shared_engines(model_path: str, engine_kwargs: dict[str, Any], env: dict[str, str],
                   bundle: dict[str, float], num_replicas: int) -> list[ray.actor.ActorHandle]:
    """The engine actors for this key: the held ones (switched to `model_path`'s weights if
    they hold another model of its family), or new ones (after releasing any other set). New
    actors load in the background, and the first `generate` call waits for them."""
    global _starts
    key = engine_key(model_path, engine_kwargs, env, bundle, num_replicas)
    with _lock:
        held = _held.get(key)
        if held is not None:
            if held.model_path != model_path:
                _switch_weights(held, model_path)
            else:
                log.info("reusing the vLLM engine(s) of %s (%d replica(s))", model_path,
                         num_replicas)
            return held.actors
        release_engines()
        _register_atexit()
        import ray

        # On CPU the engine runs in the actor's own process (inprocess_engine.py).
        in_process = IN_PROCESS_ON_CPU and not bundle.get("GPU", 0)
        options: dict[str, Any] = {
            "num_cpus": bundle.get("CPU", 1), "num_gpus": bundle.get("GPU", 0),
            # A dead engine restarts (reloading the model) and its call is retried, as Ray
            # Data's pools do; the stall watchdog stops an engine that keeps dying.
            "max_restarts": 2, "max_task_retries": 2,
        }
        if env:
            options["runtime_env"] = {"env_vars": dict(env)}
        actor_cls = ray.remote(EngineActor)
        actors = [actor_cls.options(**options).remote(model_path, engine_kwargs, in_process)
                  for _ in range(num_replicas)]
        _held[key] = _EngineSet(key, model_path, actors, [a.info.remote() for a in actors])
        _starts += num_replicas
        log.info("started %d vLLM engine(s) for %s", num_replicas, model_path)
        return actors


def _switch_weights(held: _EngineSet, model_path: str) -> None:
    """Load `model_path`'s weights into every engine of `held` now (each call would switch its
    engine anyway: this makes the cost visible in the log and fails here if the load fails)."""
    global _reloads
    import ray

    seconds = ray.get([a.load.remote(model_path) for a in held.actors])
    held.model_path = model_path
    _reloads += len(held.actors)
    log.info("loaded the weights of %s into the held vLLM engine(s) in %.1fs", model_path,
             max(seconds))


def release_engines(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> int:
    """Shut every held engine down cleanly, then end its actor; returns how many were held.

    An engine still starting (its constructor not done) is killed at once: there is no engine
    yet to stop, and waiting would hold a failed stage for the rest of its start-up. One that
    does not stop within `timeout_s` (a hung or long call ahead of the shutdown) is killed too.
    """
    with _lock:
        sets = list(_held.values())
        _held.clear()
    if not sets:
        return 0
    import ray

    actors = [a for s in sets for a in s.actors]
    if not ray.is_initialized():
        return len(actors)  # the cluster (and the engines with it) is already gone
    started = time.monotonic()
    ready_refs = [r for s in sets for r in s.ready]
    done, _ = ray.wait(ready_refs, num_returns=len(ready_refs), timeout=0)
    up = [a for a, r in zip(actors, ready_refs, strict=True) if r in done]
    if len(up) < len(actors):
        log.info("killing %d vLLM engine(s) still starting", len(actors) - len(up))
    pending = [a.shutdown.remote() for a in up]
    try:
        ray.get(pending, timeout=timeout_s)
    except Exception as e:  # a dead, hung or failed engine: killed below all the same
        log.warning("vLLM engine shutdown did not complete cleanly (%s); killing the actor(s)",
                    type(e).__name__)
    engines_stopped = time.monotonic()
    for actor in actors:
        _end_actor(actor)
    _wait_dead(actors)
    ended = time.monotonic()
    log.info("released %d vLLM engine(s) in %.1fs (engine shutdown %.1fs, actor exit %.1fs)",
             len(actors), ended - started, engines_stopped - started, ended - engines_stopped)
    return len(actors)


def _end_actor(actor: Any) -> None:
    """End the actor process. After `shutdown` it holds no engine, child process or shared
    memory, so killing it leaves nothing behind (and frees its CPUs/GPUs at once)."""
    import ray

    with contextlib.suppress(Exception):  # already dead
        ray.kill(actor, no_restart=True)


def _wait_dead(actors: list, timeout_s: float = 10.0) -> None:
    """Until Ray reports the killed actors dead (their CPUs/GPUs are then given back): a call on
    a dead actor fails at once."""
    import ray

    # No retries: the probe is meant to fail on a dead actor, not to be retried (and reported).
    pending = [a.info.options(max_task_retries=0).remote() for a in actors]
    with contextlib.suppress(Exception):
        ray.wait(pending, num_returns=len(pending), timeout=timeout_s)


def engine_starts() -> int:
    """Engines started by this driver so far (tests and benchmarks count reuse with it)."""
    return _starts


def engine_reloads() -> int:
    """Weight switches of held engines by this driver so far (each one a start-up saved)."""
    return _reloads


def held_engines() -> int:
    """Engine actors this driver holds now."""
    with _lock:
        return sum(len(s.actors) for s in _held.values())


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_release_at_exit)
        _atexit_registered = True


def _release_at_exit() -> None:
    try:
        release_engines(timeout_s=30)
    except Exception as e:  # interpreter shutdown: best effort
        log.debug("releasing vLLM engines at exit failed: %s", e)
