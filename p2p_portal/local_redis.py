"""`python -m p2p_portal.local_redis`: make sure Redis answers at REDIS_URL before `make run` or `make test`.

When Redis at REDIS_URL answers, nothing happens. When it does not and REDIS_URL is on this machine, a redis-server
is started on its port, with its data under var/redis, and waited for. A remote REDIS_URL that does not answer is an
error: starting a local server would not help. No Django here: it runs before the portal is set up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def ensure(url: str, data_dir: Path, timeout: float = 10.0) -> str:
    """Return what was done ('answering' or 'started'); raise SystemExit with a message when Redis cannot be had."""
    if answers(url):
        return "answering"
    parts = urllib.parse.urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 6379}"
    if parts.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"Redis at {where} (REDIS_URL) does not answer; start it, or unset REDIS_URL")
    port = str(parts.port or 6379)
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"Starting a local redis-server on port {port} (data in {data_dir})")
    command = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", port, "--dir", str(data_dir)]
    subprocess.run([*command, "--logfile", str(data_dir / "redis.log")], check=True)
    deadline = time.monotonic() + timeout
    while not answers(url):
        if time.monotonic() > deadline:
            raise SystemExit(f"redis-server on port {port} did not answer within {timeout:.0f}s: see {data_dir}")
        time.sleep(0.1)
    return "started"


if __name__ == "__main__":
    var_dir = Path(os.environ.get("P2P_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
    ensure(os.environ.get("REDIS_URL", DEFAULT_URL), var_dir / "redis")
    sys.exit(0)
