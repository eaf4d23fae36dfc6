"""The S3 fixture itself: credentials are checked, and a restart keeps the data."""

import pytest
import s3fs


def test_s3_server_refuses_wrong_credentials(s3_server):
    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret="wrong", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3_server.endpoint})
    with pytest.raises(PermissionError):
        fs.ls(s3_server.bucket)


def test_s3_server_restart_keeps_objects(s3_server):
    from aipo_ray.storage import StorageError, filesystem, with_retries

    storage = s3_server.storage_config()
    uri = s3_server.fresh_prefix() + "/hello.txt"
    fs, path = filesystem(uri, storage)
    fs.pipe_file(path, b"still here")
    down_storage = s3_server.storage_config(max_retries=0)
    with s3_server.down(), pytest.raises(StorageError, match="storage unreachable"):
        fs_down, _ = filesystem(uri, down_storage)
        with_retries(lambda: fs_down.cat_file(path), "read while down", down_storage)
    fs, path = filesystem(uri, storage)
    assert fs.cat_file(path) == b"still here"
