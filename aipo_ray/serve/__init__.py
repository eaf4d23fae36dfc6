"""Ray Serve applications: OpenAI-compatible chat completions for a checkpoint, and /rank.

Ray Serve and FastAPI load only when a server starts; `protocol` (limits, auth, errors) is light.
"""

from __future__ import annotations


def serve_checkpoint(checkpoint: str, config_path: str | None = None,
                     overrides: list[str] | None = None, blocking: bool = True, config=None):
    """Serve `checkpoint` over HTTP; see aipo_ray.serve.runner.serve_checkpoint."""
    from .runner import serve_checkpoint as _serve

    return _serve(checkpoint, config_path=config_path, overrides=overrides, blocking=blocking,
                  config=config)


__all__ = ["serve_checkpoint"]
