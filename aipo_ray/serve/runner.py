"""Starting `aipo serve`: check the checkpoint, start Ray Serve on the configured address, run."""

from __future__ import annotations

import logging
import posixpath
import signal
import socket
import threading
from dataclasses import dataclass

from aipo_ray.config import RunConfig, StorageConfig, load_config
from aipo_ray.storage import MODELS, RUN_JSON, RunDir, is_remote

log = logging.getLogger(__name__)

APP_NAME = "aipo"


@dataclass
class ServedApp:
    """A running application: its base URL; `shutdown()` stops Serve."""

    url: str
    model: str

    def shutdown(self) -> None:
        from ray import serve

        serve.shutdown()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_config(checkpoint: str, config_path: str | None = None,
                 overrides: list[str] | None = None,
                 storage: StorageConfig | None = None) -> RunConfig:
    """The config for ranking, storage and serve settings, with `model.path` = the checkpoint:
    `config_path` when given, else the run.json of the run holding `<run>/models/iter_NNN`,
    else the defaults."""
    overrides = [*(overrides or []), f"model.path={checkpoint}"]
    if config_path is None:
        found = _run_json_config(checkpoint, overrides, storage)
        if found is not None:
            return found
    return load_config(config_path, overrides)


def _run_json_config(checkpoint: str, overrides: list[str],
                     storage: StorageConfig | None) -> RunConfig | None:
    models_dir = posixpath.dirname(checkpoint.rstrip("/"))
    run_root = posixpath.dirname(models_dir)
    if not run_root or posixpath.basename(models_dir) != MODELS:
        return None
    from aipo_ray.report.collect import load_run_config

    rd = RunDir(run_root, storage or StorageConfig())
    try:
        if not rd.exists(RUN_JSON):
            return None
    except Exception as e:  # unreadable run root (no credentials, no such bucket): use defaults
        log.warning("cannot read %s/%s (%s); using the default config", run_root, RUN_JSON,
                    type(e).__name__)
        return None
    config = load_run_config(rd, overrides)
    # run.json holds no credentials: keep the ones that just read it.
    return config.model_copy(update={"storage": rd.storage}) if storage else config


def build_app(checkpoint: str, config: RunConfig, model_uri: str | None = None,
              model_dir: str | None = None):
    """The Serve application graph: gateway → chat model (+ ranker when `serve.rank`).

    `model_dir` is the driver's local copy of θ_t; ray.serve.llm reads its config to plan the
    vLLM engine before any replica starts (each replica then fetches `model_uri` itself).
    """
    from .app import Gateway, RankModel
    from .backends import pick_backend
    from .protocol import token_digest

    cfg = config.serve
    # The token itself never reaches Ray: the gateway gets its sha256 only.
    public = cfg.model_copy(update={"auth_token": None})
    name = posixpath.basename(checkpoint.rstrip("/")) or checkpoint
    uri = model_uri or checkpoint
    backend = pick_backend(cfg)
    if backend == "vllm":
        from .vllm_engine import build_vllm_chat

        chat = build_vllm_chat(model_dir or uri, uri, name, public, config.model, config.storage)
    else:
        chat = hf_chat(uri, config)
    ranker = None
    if cfg.rank:
        ranker = RankModel.options(ray_actor_options={
            "num_cpus": config.ranking.cpus_per_replica, "num_gpus": config.ranking.gpus_per_replica,
        }).bind(config.ranking, uri, config.storage, config.model)
    return Gateway.bind(chat, ranker, public, token_digest(cfg), name, backend)


def hf_chat(model_uri: str, config: RunConfig):
    """Our transformers chat deployment, bound."""
    from .app import ChatModel

    cfg = config.serve
    actor: dict = {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}
    return ChatModel.options(num_replicas=cfg.num_replicas, ray_actor_options=actor).bind(
        model_uri, config.storage, config.model)


def serve_checkpoint(checkpoint: str, config_path: str | None = None,
                     overrides: list[str] | None = None, blocking: bool = True,
                     config: RunConfig | None = None) -> ServedApp:
    """Serve a committed checkpoint (or a model dir) over HTTP on `serve.host:serve.port`.

    The checkpoint is verified here first (manifest, sizes, sha256), so a bad URI fails before
    any replica starts. `blocking` waits until Ctrl-C, then shuts Serve down.
    """
    from ray import serve

    from aipo_ray.models import resolve_model_path
    from aipo_ray.runtime import init_ray

    config = config or serve_config(checkpoint, config_path, overrides)
    local = resolve_model_path(checkpoint, config.storage)
    # Remote checkpoints are fetched (and cached) by each replica on its own node.
    model_uri = checkpoint if is_remote(checkpoint) else local
    cfg = config.serve
    port = cfg.port or free_port(cfg.host)
    init_ray(config.ray)
    stop = stop_event() if blocking else None
    try:
        serve.start(http_options={"host": cfg.host, "port": port})
        serve.run(build_app(checkpoint, config, model_uri, local), name=APP_NAME, route_prefix="/",
                  blocking=False)
    except BaseException:
        serve.shutdown()  # a failed deployment must not leave replicas holding the port
        raise
    served = ServedApp(url=f"http://{cfg.host}:{port}", model=checkpoint)
    log.info("serving %s at %s (POST /v1/chat/completions, /v1/completions, /rank)", checkpoint, served.url)
    if blocking:
        print(f"serving {checkpoint} at {served.url}; Ctrl-C stops", flush=True)
        wait_for_stop(stop)
        served.shutdown()
    return served


def stop_event() -> threading.Event:
    """Set on SIGTERM (what `kill` and Kubernetes send). Installed after `ray.init`, which
    replaces the handler with one that exits at once, and before Serve starts, so a SIGTERM
    while the replicas come up still shuts Serve down cleanly."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def wait_for_stop(stop: threading.Event) -> None:
    """Block until Ctrl-C or `stop` is set."""
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    log.info("stopping Serve")
