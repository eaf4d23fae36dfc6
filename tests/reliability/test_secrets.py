"""Secrets: S3 credentials, a hub token and the serve token given to a real run never appear in
anything it writes (the S3 run directory, the driver's log, Ray's session logs, the report).
The serve bearer token is compared with `hmac.compare_digest` on every path.

Config repr/str/JSON hiding is tests/test_config.py::test_secrets_stay_out_of_json_repr_and_str;
accept/reject of the bearer header is tests/serve/test_protocol.py.
"""

from __future__ import annotations

import hmac
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from aipo_ray.config import ServeConfig
from aipo_ray.report import write_report
from aipo_ray.serve import protocol
from aipo_ray.storage import RunDir
from tests.e2e.conftest import tiny_run_config
from tests.e2e.processes import kill_group, start_driver

HF_TOKEN = "hf_fakeTokenForTests9f8e7d6c"
SERVE_TOKEN = "serve-token-5b4a3c2d"


def _s3_files(rd: RunDir) -> dict[str, bytes]:
    return {path: rd.fs.cat_file(path) for path in rd.fs.find(rd.path())}


def _local_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.reliability_slow  # a whole tiny iteration on S3 in a driver subprocess (~3 min)
def test_a_run_on_s3_writes_no_secret_anywhere(s3_server, s3_storage, tiny_llama_path, tmp_path):
    _, prefix = s3_storage
    config = tiny_run_config(tiny_llama_path, prefix, tmp_path / "prompts.jsonl", iterations=1)
    config["storage"] = {
        "endpoint_url": s3_server.endpoint, "region": "us-east-1",
        "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key,
        "local_cache_dir": str(tmp_path / "cache"),
    }
    config["serve"] = {"auth_token": SERVE_TOKEN}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "driver.log"
    ray_tmp = Path(tempfile.mkdtemp(prefix="aipo-r", dir="/tmp"))  # short: Ray's socket paths
    try:
        driver = start_driver(path, log, env={"HF_TOKEN": HF_TOKEN, "RAY_TMPDIR": str(ray_tmp)})
        try:
            assert driver.wait(timeout=900) == 0, log.read_text()[-4000:]
        finally:
            kill_group(driver)
        rd = RunDir(prefix, s3_server.storage_config())
        assert rd.latest_model() == "iter_001"
        report = write_report(prefix, storage=s3_server.storage_config())  # into the run dir

        written = {**_s3_files(rd), str(log): log.read_bytes(), **_local_files(ray_tmp)}
        assert any(name.endswith("run.json") for name in written)
        assert any(name.startswith(str(ray_tmp)) and name.endswith(".log") for name in written)
        assert any(name.endswith(report.split("://")[-1]) for name in written), report
        assert len(written) > 30, sorted(written)
        for secret in (s3_server.secret_key, HF_TOKEN, SERVE_TOKEN):
            leaks = [name for name, data in written.items() if secret.encode() in data]
            assert not leaks, f"{secret[:4]}... found in {leaks}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.reliability
def test_serve_token_is_compared_in_constant_time_on_every_path(monkeypatch):
    """Every header, right or wrong or missing, goes through hmac.compare_digest on digests."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(protocol.hmac, "compare_digest", spy)
    digest = protocol.token_digest(ServeConfig(auth_token=SERVE_TOKEN))
    headers = [f"Bearer {SERVE_TOKEN}", None, "", "Bearer wrong", f"Basic {SERVE_TOKEN}"]
    outcomes = []
    for header in headers:
        try:
            protocol.check_auth(header, digest)
            outcomes.append(True)
        except protocol.ApiError as e:
            assert e.status == 401 and SERVE_TOKEN not in e.message
            outcomes.append(False)
    assert outcomes == [True, False, False, False, False]
    assert len(calls) == len(headers)
    assert all(len(a) == len(b) == 32 and b == digest for a, b in calls)  # sha256 digests only
