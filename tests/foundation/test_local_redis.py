"""`make run` and `make test` get a Redis: the one at REDIS_URL, or a local one started on REDIS_URL's port."""

import os
import subprocess

import pytest
import redis

from p2p_portal.local_redis import ensure
from tests.support.registry_server import free_port


def test_a_redis_that_answers_is_left_alone(tmp_path):
    assert ensure(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), tmp_path / "redis") == "answering"
    assert not (tmp_path / "redis").exists()


def test_a_local_redis_url_that_does_not_answer_gets_a_server_on_its_port(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/3"
    try:
        assert ensure(url, tmp_path / "redis") == "started"
        client = redis.Redis.from_url(url)
        assert client.ping() and client.config_get("dir")["dir"] == str(tmp_path / "redis")
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)


def test_a_remote_redis_url_that_does_not_answer_is_an_error_naming_it(tmp_path):
    with pytest.raises(SystemExit, match=r"Redis at 127\.0\.0\.2:\d+ \(REDIS_URL\) does not answer"):
        ensure(f"redis://127.0.0.2:{free_port()}/0", tmp_path / "redis")
    assert not (tmp_path / "redis").exists()
