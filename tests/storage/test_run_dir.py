"""RunDir paths: what the driver hands to Ray workers must resolve from any working directory."""

import os

from aipo_ray.storage import RunDir


def test_a_relative_local_run_dir_becomes_absolute(tmp_path, monkeypatch):
    # `make run` passes `--run-dir runs/tiny-cpu`; Ray Train workers do not share the driver's
    # working directory, so a model URI under a relative run dir failed to load there.
    monkeypatch.chdir(tmp_path)
    rd = RunDir("runs/tiny-cpu/")
    assert rd.uri == str(tmp_path / "runs" / "tiny-cpu")
    assert os.path.isabs(rd.model_uri(0))
    rd.write_json("run.json", {"ok": True})
    monkeypatch.chdir("/")
    assert RunDir(rd.uri).read_json("run.json") == {"ok": True}


def test_remote_and_file_uris_are_kept_as_given():
    assert RunDir("file:///tmp/x/").uri == "file:///tmp/x"
