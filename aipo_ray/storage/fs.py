"""One way to reach a run directory, local or s3://, with bounded retries on flaky storage."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import fsspec

from aipo_ray.config import StorageConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors worth retrying: the server is away or slow. Permission and missing-key errors are not.
_TRANSIENT_NAMES = (
    "ConnectionError", "ConnectTimeoutError", "EndpointConnectionError", "ReadTimeoutError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError",
    "ServerTimeoutError", "ConnectionClosedError", "ResponseParserError",
)

# S3 error codes of a server that is up but not ready or overloaded (AWS: retry 500 and 503);
# a freshly restarted S3 gateway answers InternalError until its backends are back.
_TRANSIENT_S3_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown",
                                 "RequestTimeout", "InternalServerError"})


class StorageError(RuntimeError):
    """Storage is unreachable or refused us; the message never carries credentials."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def s3_options(cfg: StorageConfig | None) -> dict:
    """s3fs options from config, falling back to the standard AWS environment variables."""
    cfg = cfg or StorageConfig()
    opts: dict = {"anon": cfg.anon}
    key = cfg.access_key_id.get_secret_value() if cfg.access_key_id else None
    secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
    if key and secret:
        opts["key"], opts["secret"] = key, secret
        if cfg.session_token:
            opts["token"] = cfg.session_token.get_secret_value()
    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    client_kwargs = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if cfg.region:
        client_kwargs["region_name"] = cfg.region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    # One attempt per call at the botocore level too: its legacy `max_attempts` counts retries,
    # so 1 still meant a hidden retry after a random backoff of up to a few seconds, which could
    # ride out a short outage unseen (and unbounded by our StorageConfig).
    opts["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                             "retries": {"mode": "standard", "total_max_attempts": 1}}
    # Listings must see what this process (or a retried task) just wrote.
    opts["use_listings_cache"] = False
    return opts


def filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a local path or an s3:// URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        fs, path = fsspec.core.url_to_fs(uri.replace("s3a://", "s3://"), **s3_options(cfg))
        # s3fs retries internally too; keep its own loop short so ours governs the total wait.
        # (`retries` is an attribute, not a constructor option: passed in, it reaches aiobotocore.)
        fs.retries = 1
        return fs, path
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(uri))
    return fs, path


def is_transient(exc: BaseException) -> bool:
    for e in _exception_chain(exc):
        if type(e).__name__ in _TRANSIENT_NAMES or isinstance(e, ConnectionError | TimeoutError):
            return True
        if _is_s3_server_error(e):
            return True
    return False


def _is_s3_server_error(exc: BaseException) -> bool:
    """A botocore ClientError with a 5xx status or a retryable S3 code (not 403/404: refusals)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in _TRANSIENT_S3_CODES or (isinstance(status, int) and status >= 500)


def _exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def with_retries(
    fn: Callable[[], T], what: str, cfg: StorageConfig | None = None, sleep=time.sleep
) -> T:
    """Call `fn`, retrying transient storage errors with exponential backoff, then raise StorageError.

    Ray tasks get their own retries from Ray; this covers driver-side storage calls, which
    Ray does not retry for us.
    """
    cfg = cfg or StorageConfig()
    wait = cfg.retry_backoff_s
    for attempt in range(cfg.max_retries + 1):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == cfg.max_retries:
                raise StorageError(
                    f"{what}: storage unreachable after {attempt + 1} attempts "
                    f"({type(e).__name__}); check the endpoint and that the server is up"
                ) from None
            log.warning("%s: transient storage error (%s); retry %d/%d in %.1fs",
                        what, type(e).__name__, attempt + 1, cfg.max_retries, wait)
            sleep(wait)
            wait = min(wait * 2, cfg.retry_max_wait_s)
    raise AssertionError("unreachable")
