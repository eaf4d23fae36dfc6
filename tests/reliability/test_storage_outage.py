"""Storage outages on a table stage, and wrong credentials, against a real S3 server (weed mini).

The outage during a commit is in test_checkpoint_faults.py; here the S3 server is killed between
two part files of a stage's table.
"""

from __future__ import annotations

import threading
import time
import traceback

import pyarrow as pa
import pytest

from aipo_ray.pipeline import Stage, StageContext, StageResult, run_stage
from aipo_ray.pipeline.driver import prepare_run_dir
from aipo_ray.storage import StorageError
from aipo_ray.storage.fs import is_transient

from .commits import run_config

pytestmark = pytest.mark.reliability


class OutageStage(Stage):
    """Writes part 0, kills the S3 server, restarts it after `restart_after_s` (None: never),
    then writes part 1."""

    name = "outage"
    inputs = ()
    config_keys = ()

    def __init__(self, server, restart_after_s: float | None):
        self.server, self.restart_after_s = server, restart_after_s
        self.restart: threading.Timer | None = None

    def run(self, ctx: StageContext) -> StageResult:
        ctx.write(self.name, pa.table({"prompt_id": ["a", "b"]}), part=0)
        if self.server is not None:
            self.server.stop(kill=True)
            if self.restart_after_s is not None:
                self.restart = threading.Timer(self.restart_after_s, self.server.start)
                self.restart.start()
        ctx.write(self.name, pa.table({"prompt_id": ["c", "d"]}), part=1)
        return StageResult(rows_in=4, rows_out=4)


def _context(s3_storage, tiny_llama_path, **storage_overrides) -> StageContext:
    storage, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix, storage.model_validate(
        {**storage.model_dump(), **storage_overrides}))
    return StageContext(config=config, run_dir=prepare_run_dir(config), iteration=1)


def test_outage_during_a_stage_is_retried_with_backoff_then_succeeds(
    s3_server, s3_storage, tiny_llama_path, caplog
):
    ctx = _context(s3_storage, tiny_llama_path, max_retries=10, retry_backoff_s=0.3,
                   retry_max_wait_s=2.0)
    with caplog.at_level("WARNING", logger="aipo_ray.storage.fs"):
        stage = OutageStage(s3_server, restart_after_s=1.5)
        record = run_stage(stage, ctx)
    stage.restart.join(timeout=60)
    waits = [float(m.split(" in ")[-1].rstrip("s")) for m in caplog.messages
             if "transient storage error" in m]
    assert waits, f"the outage was never hit; logged: {caplog.messages}"
    assert waits == sorted(waits) and waits[0] == pytest.approx(0.3)  # backoff grows
    assert record["rows_out"] == 4
    assert sorted(ctx.read("outage")["prompt_id"].to_pylist()) == ["a", "b", "c", "d"]


def test_outage_past_the_retry_limit_raises_and_the_partial_table_is_never_complete(
    s3_server, s3_storage, tiny_llama_path
):
    ctx = _context(s3_storage, tiny_llama_path)  # 3 retries, 0.2 s first backoff
    started = time.monotonic()
    try:
        with pytest.raises(StorageError, match=r"write .*outage.*unreachable after 4 attempts"):
            run_stage(OutageStage(s3_server, restart_after_s=None), ctx)
        assert time.monotonic() - started < 60
    finally:
        s3_server.start()
    rd = ctx.run_dir
    assert rd.stage_success(1, "outage") is None
    assert rd.exists("iter_001/outage")  # part 0 is there, but nobody may trust it
    with pytest.raises(Exception, match="_SUCCESS"):
        ctx.read("outage")
    # The rerun clears the half-written table: every row exactly once.
    run_stage(OutageStage(None, None), ctx)
    assert sorted(ctx.read("outage")["prompt_id"].to_pylist()) == ["a", "b", "c", "d"]


def test_wrong_credentials_fail_fast_without_printing_the_secret(
    s3_server, s3_storage, tiny_llama_path, caplog
):
    secret = "wrong-secret-3f9a7c1e"
    _, prefix = s3_storage
    config = run_config(tiny_llama_path, prefix,
                        s3_server.storage_config(secret_access_key=secret))
    started = time.monotonic()
    with caplog.at_level("DEBUG", logger="aipo_ray"), pytest.raises(Exception) as info:
        prepare_run_dir(config)
    assert time.monotonic() - started < 10  # no retry loop on a refusal
    assert not isinstance(info.value, StorageError)  # not mistaken for an outage
    assert "transient storage error" not in caplog.text
    text = "".join(traceback.format_exception(info.value))
    assert "Forbidden" in text or "Access" in text or "denied" in text.lower(), text[-2000:]
    assert secret not in text and secret not in caplog.text
    assert secret not in repr(config) and secret not in str(config.to_public_dict())


@pytest.mark.parametrize(("code", "status", "transient"), [
    ("InternalError", 500, True),  # what weed mini answers just after a restart
    ("SlowDown", 503, True),
    ("ServiceUnavailable", 503, True),
    ("AccessDenied", 403, False),
    ("NoSuchKey", 404, False),
])
def test_s3_server_errors_are_retried_and_refusals_are_not(code, status, transient):
    """As s3fs raises them: an OSError translated from botocore's ClientError."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    error = ClientError({"Error": {"Code": code, "Message": "m"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    try:
        try:
            raise error
        except ClientError as e:
            raise translate_boto_error(e) from e
    except Exception as raised:
        assert is_transient(raised) is transient
