"""Promotions and rollbacks under concurrency: threads with their own PostgreSQL connections, a real registry.

Where the outcome depends on which transaction gets where first, the test fixes the interleaving with PostgreSQL
itself: it holds the audit append lock (every state change takes it last in its transaction) or a row lock until
the racing threads are all waiting, then lets them go.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction

from ci_integrations.models import Arrival, AuditEntry, Bucket, Promotion, Registry
from ci_integrations.services import copying
from ci_integrations.services.audit import AUDIT_ADVISORY_LOCK_ID, audit_verify
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.errors import PolicyViolation
from ci_integrations.services.promotions import bucket_rollback, promotion_request, promotion_retry
from ci_integrations.services.reconciler import reconcile
from tests.promotions.slow_proxy import SlowProxy
from tests.support.images import get_manifest_digest
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


class Background:
    """Run `target` in a thread with its own database connection; join() returns its result or its exception."""

    def __init__(self, target):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target):
        try:
            self.result = target()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            self.result = exc
        finally:
            connection.close()

    def join(self, timeout: float = 30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the thread is still running"
        return self.result


def in_threads(*targets) -> list:
    """Run callables at once, each in a thread with its own connection; their results or exceptions."""
    barrier = threading.Barrier(len(targets))

    def waiting(target):
        return lambda: (barrier.wait(), target())[1]

    return [background.join(60) for background in [Background(waiting(target)) for target in targets]]


def wait_for(predicate, what: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def lock_waiters(event: str | None = None) -> int:
    """How many other sessions of this database wait for a lock (any, or of one kind such as 'advisory')."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # inside a transaction the view is read once otherwise
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = coalesce(%s, wait_event) AND pid <> pg_backend_pid()",
            [event],
        )
        return cursor.fetchone()[0]


def wait_for_lock_waiters(count: int, event: str | None = None) -> None:
    wait_for(lambda: lock_waiters(event) >= count, f"{count} session(s) to wait for a lock")


@contextmanager
def audit_lock_held():
    """Hold the audit append lock: every transaction that changes a promotion stops at its first audit entry."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [AUDIT_ADVISORY_LOCK_ID])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [AUDIT_ADVISORY_LOCK_ID])


def failed_promotion(world, artifact, to_env: str) -> Promotion:
    """A promotion whose copy really failed: the target registry was unreachable while it ran."""
    registry = getattr(world, to_env).registry
    good_url = registry.url
    Registry.objects.filter(pk=registry.pk).update(
        url=f"http://127.0.0.1:{free_port()}", options={"retry_attempts": 1, "retry_base_delay": 0.01}
    )
    promotion = promotion_request(artifact=artifact, to_env=to_env, actor=world.actor(world.alice))
    promotion_execute(promotion_id=promotion.pk)
    Registry.objects.filter(pk=registry.pk).update(url=good_url, options={})
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED, promotion.log
    return promotion


def open_promotions(artifact, bucket):
    return Promotion.objects.filter(artifact=artifact, to_bucket=bucket, state__in=Promotion.OPEN)


# ---- one open promotion per artifact and bucket ----------------------------------------------------------------


def test_the_same_promotion_requested_twice_at_once_gives_one_promotion_and_one_refusal(world, rq_queues):
    artifact = world.register("qa", "v1")

    def request():
        return promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))

    results = in_threads(request, request)

    made = [r for r in results if isinstance(r, Promotion)]
    refused = [r for r in results if isinstance(r, PolicyViolation)]
    assert len(made) == 1 and len(refused) == 1, results
    assert "open promotion" in refused[0].message
    assert open_promotions(artifact, world.staging).count() == 1
    assert AuditEntry.objects.filter(action="promotion.requested").count() == 1
    assert AuditEntry.objects.filter(action="promotion.refused").count() == 1
    assert [job_id for queue in rq_queues.values() for job_id in queue.job_ids] == [made[0].job_id]


def test_a_retry_racing_a_new_request_of_the_same_artifact_leaves_one_open_promotion(world, rq_queues):
    artifact = world.register("qa", "v1")
    failed = failed_promotion(world, artifact, "staging")

    # Both have checked for another open promotion and stop at their audit entry (or at the other's lock).
    with audit_lock_held():
        retry = Background(lambda: promotion_retry(promotion=failed, actor=world.actor(world.bob)))
        request = Background(
            lambda: promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
        )
        wait_for_lock_waiters(2)
    results = [retry.join(), request.join()]

    assert sorted(type(r).__name__ for r in results) == ["PolicyViolation", "Promotion"], results
    assert open_promotions(artifact, world.staging).count() == 1
    assert audit_verify().ok


def test_two_failed_promotions_of_one_artifact_retried_at_once_leave_one_open_promotion(world, rq_queues):
    artifact = world.register("qa", "v1")
    first = failed_promotion(world, artifact, "staging")
    second = failed_promotion(world, artifact, "staging")

    with audit_lock_held():
        retries = [
            Background(lambda p=p: promotion_retry(promotion=p, actor=world.actor(world.bob))) for p in (first, second)
        ]
        wait_for_lock_waiters(2)
    results = [retry.join() for retry in retries]

    assert sorted(type(r).__name__ for r in results) == ["PolicyViolation", "Promotion"], results
    assert open_promotions(artifact, world.staging).count() == 1


# ---- copies into one bucket --------------------------------------------------------------------------------------


def test_two_copies_under_one_tag_leave_the_last_finished_as_current_and_in_the_registry(world, rq_queues):
    # CI pushed and registered `latest` twice; both builds are promoted into staging at once.
    first = world.register("qa", "latest", layers=3, layer_size=256 * 1024)
    second = world.register("qa", "latest", layers=3, layer_size=256 * 1024)
    made = [promotion_request(artifact=a, to_env="staging", actor=world.actor(world.alice)) for a in (first, second)]

    results = in_threads(*[lambda p=p: promotion_execute(promotion_id=p.pk) for p in made])

    assert results == [None, None]
    done = sorted(Promotion.objects.filter(pk__in=[p.pk for p in made]), key=lambda p: p.finished_at)
    assert [p.state for p in done] == [Promotion.State.SUCCEEDED] * 2
    world.staging.refresh_from_db()
    current = world.staging.current_arrival
    assert current.promotion_id == done[-1].pk and current.artifact_id == done[-1].artifact_id
    assert get_manifest_digest(world.build_url, world.staging.repository, "latest") == done[-1].digest


def test_a_rollback_racing_a_promotion_into_one_bucket_leaves_the_bucket_and_registry_agreeing(world, rq_queues):
    world.to_prod.required_approvals = 0
    world.to_prod.rollback_approvals = 0
    world.to_prod.save()
    old, bad, fix = (world.register("staging", tag) for tag in ("v1", "v2", "v3"))
    for artifact in (old, bad):
        promotion_execute(
            promotion_id=promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice)).pk
        )
    earlier = Arrival.objects.get(bucket=world.prod, artifact=old)
    rollback = bucket_rollback(bucket=world.prod, to_arrival=earlier, actor=world.actor(world.bob), reason="v2 500s")
    forward = promotion_request(artifact=fix, to_env="prod", actor=world.actor(world.alice))

    results = in_threads(
        lambda: promotion_execute(promotion_id=rollback.pk), lambda: promotion_execute(promotion_id=forward.pk)
    )

    assert results == [None, None]
    done = sorted(Promotion.objects.filter(pk__in=[rollback.pk, forward.pk]), key=lambda p: p.finished_at)
    assert [p.state for p in done] == [Promotion.State.SUCCEEDED] * 2, [p.error for p in done]
    assert done[0].finished_at <= done[1].started_at
    world.prod.refresh_from_db()
    current = world.prod.current_arrival
    assert current.promotion_id == done[-1].pk
    assert get_manifest_digest(world.production_url, world.prod.repository, current.tag) == current.artifact.digest
    assert get_manifest_digest(world.production_url, world.prod.repository, "v1") == old.digest


# ---- a copy that is still running ----------------------------------------------------------------------------------


def test_a_copy_whose_heartbeat_is_late_is_not_requeued_while_its_worker_still_copies(
    world, rq_queues, settings, monkeypatch
):
    """A late heartbeat alone never makes the reconciler run the copy a second time. (A cancel, by contrast, now
    stops a running copy on purpose: tests/promotions/test_registry_hangs.py.)"""
    proxy = SlowProxy(world.build_url, bytes_per_second=128 * 1024)
    try:
        world.staging.registry = Registry.objects.create(name="build-behind-a-slow-link", url=proxy.url)
        world.staging.save()
        world.to_prod.required_approvals = 0
        world.to_prod.save()
        artifact = world.register("staging", "v1", layers=1, layer_size=1024 * 1024)
        promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
        # The worker is alive and copying, but its heartbeat is late (a slow database, a long pause).
        monkeypatch.setattr(copying, "PROGRESS_EVERY", 30.0)
        settings.P2P_HEARTBEAT_STALE_AFTER = timedelta(milliseconds=200)
        worker = Background(lambda: promotion_execute(promotion_id=promotion.pk))

        def started_copying():
            promotion.refresh_from_db()
            return promotion.state == Promotion.State.RUNNING

        wait_for(started_copying, "the worker to start copying")
        time.sleep(0.3)
        requeued = reconcile()
        proxy.throttled = False
        assert worker.join() is None
    finally:
        proxy.close()

    promotion.refresh_from_db()
    world.prod.refresh_from_db()
    assert get_manifest_digest(world.production_url, world.prod.repository, "v1") == artifact.digest
    assert promotion.state == Promotion.State.SUCCEEDED, promotion.log
    assert world.prod.current_arrival.artifact == artifact
    assert requeued == 0 and promotion.attempts == 1
    assert not AuditEntry.objects.filter(action="promotion.requeued").exists()


# ---- a copy that finishes while others request ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["the same artifact", "another artifact"])
def test_a_copy_finishing_with_auto_promotion_while_someone_requests_does_not_deadlock(world, rq_queues, which):
    artifact = world.register("qa", "v1")
    wanted = artifact if which == "the same artifact" else world.register("staging", "b1")
    world.to_prod.auto_promote = True
    world.to_prod.save()
    copy = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))

    # The copy is done and stops at the lock on its target bucket; it then reaches the audit lock before the request
    # does, and the request takes its own locks and waits behind it.
    with transaction.atomic():
        Bucket.objects.select_for_update().get(pk=world.staging.pk)
        worker = Background(lambda: promotion_execute(promotion_id=copy.pk))
        wait_for_lock_waiters(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [AUDIT_ADVISORY_LOCK_ID])
    try:
        wait_for_lock_waiters(1, "advisory")
        request = Background(lambda: promotion_request(artifact=wanted, to_env="prod", actor=world.actor(world.alice)))
        wait_for_lock_waiters(2)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [AUDIT_ADVISORY_LOCK_ID])
    copied, requested = worker.join(), request.join()

    assert not isinstance(copied, DatabaseError) and not isinstance(requested, DatabaseError), (copied, requested)
    copy.refresh_from_db()
    assert copied is None and copy.state == Promotion.State.SUCCEEDED, copy.log
    auto = Promotion.objects.get(artifact=artifact, to_bucket=world.prod)
    assert auto.requested_by_label == "auto-promote" and auto.state == Promotion.State.PENDING_APPROVAL
    if which == "the same artifact":
        assert isinstance(requested, PolicyViolation) and "open promotion" in requested.message
    else:
        assert isinstance(requested, Promotion) and requested.state == Promotion.State.PENDING_APPROVAL
    assert audit_verify().ok


def test_a_passing_check_that_auto_promotes_while_someone_requests_does_not_deadlock(world, rq_queues):
    from ci_integrations.services.artifacts import check_report

    artifact = world.register("qa", "v1")
    world.to_staging.auto_promote, world.to_staging.required_checks = True, ["functional"]
    world.to_staging.save()

    # The report reaches the audit lock first; the request takes its own locks and then waits too.
    with audit_lock_held():
        report = Background(
            lambda: check_report(artifact=artifact, name="functional", status="passed", actor=world.actor(world.alice))
        )
        wait_for_lock_waiters(1, "advisory")
        request = Background(
            lambda: promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
        )
        wait_for_lock_waiters(2)
    reported, requested = report.join(), request.join()

    assert not isinstance(reported, DatabaseError) and not isinstance(requested, DatabaseError), (reported, requested)
    auto = Promotion.objects.get(artifact=artifact, to_bucket=world.staging)
    assert auto.requested_by_label == "auto-promote"
    assert isinstance(requested, PolicyViolation) and "open promotion" in requested.message
    assert audit_verify().ok
