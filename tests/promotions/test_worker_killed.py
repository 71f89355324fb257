"""A worker process SIGKILLed in the middle of a copy: the reconciler notices and the promotion still succeeds."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from ci_integrations.models import AuditEntry, Promotion, Registry
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.reconciler import reconcile
from tests.promotions.slow_proxy import SlowProxy
from tests.support.images import get_manifest_digest

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def start_worker(log_path: Path, *queues: str, options: tuple[str, ...] = ()) -> subprocess.Popen:
    """`manage.py p2p_worker` as production runs it (forking RQ worker), against the test database and Redis, for
    `queues` (default: promotions), with the command's `options`."""
    db = settings.DATABASES["default"]
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
    )
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    return subprocess.Popen(
        [sys.executable, "manage.py", "p2p_worker", "--no-reconciler", *options, *(queues or ("promotions",))],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL takes the work horse down with it
    )


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (RQ's work horse runs in a process group of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the worker and its work horse at once, as losing the machine or the container would."""
    for victim in process_tree(pid):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_copy_is_finished_by_the_reconciler(world, rq_queues, run_worker, tmp_path, settings):
    proxy = SlowProxy(world.build_url, bytes_per_second=512 * 1024)
    try:
        slow = Registry.objects.create(name="build-behind-a-slow-link", url=proxy.url)
        world.staging.registry = slow
        world.staging.save()
        world.to_prod.required_approvals = 0
        world.to_prod.save()
        artifact = world.register("staging", "v1", layers=2, layer_size=2 * 1024 * 1024)
        promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))

        worker = start_worker(tmp_path / "worker.log")
        try:

            def copying():
                promotion.refresh_from_db()
                return promotion.state == Promotion.State.RUNNING and promotion.bytes_done > 0

            wait_for(copying, 30, "the worker to start copying")
        finally:
            kill_tree(worker.pid)
            worker.wait(10)
        promotion.refresh_from_db()
        assert promotion.state == Promotion.State.RUNNING and promotion.bytes_done < promotion.bytes_total, (
            tmp_path / "worker.log"
        ).read_text()
        assert get_manifest_digest(world.production_url, world.prod.repository, "v1") is None

        # Nothing reports the death: only the heartbeat going stale does.
        settings.P2P_HEARTBEAT_STALE_AFTER = timedelta(seconds=1)
        time.sleep(1.2)
        proxy.throttled = False
        assert reconcile() == 1
        promotion.refresh_from_db()
        assert promotion.state == Promotion.State.QUEUED
        assert AuditEntry.objects.filter(action="promotion.requeued", object_id=str(promotion.pk)).exists()

        run_worker()
        promotion.refresh_from_db()
        assert promotion.state == Promotion.State.SUCCEEDED, promotion.error
        assert promotion.attempts == 2
        assert get_manifest_digest(world.production_url, world.prod.repository, "v1") == artifact.digest
        world.prod.refresh_from_db()
        assert world.prod.current_arrival.artifact == artifact
    finally:
        proxy.close()
        connection.close()
