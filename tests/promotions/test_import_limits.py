"""An import from a slow or trickling registry is bounded: it waits on its own queue for its own worker, stops itself
after P2P_IMPORT_TIMEOUT, and is run at most P2P_IMPORT_MAX_ATTEMPTS times.

Real PostgreSQL, Redis, RQ workers (forking ones started as the Procfile starts them, and burst workers in-process) and
registries; the trickle comes from a proxy in front of a real registry.
"""

import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from rq.job import Job
from rq.registry import StartedJobRegistry

from ci_integrations.models import AuditEntry, ImportJob, Promotion, Registry
from ci_integrations.services import background
from ci_integrations.services.imports import artifact_import
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.reconciler import reconcile
from tests.promotions.slow_proxy import SlowProxy
from tests.promotions.test_worker_killed import kill_tree, start_worker, wait_for
from tests.support.images import get_manifest_digest, push_random_image

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def procfile_queues() -> dict[str, list[str]]:
    """The queues each p2p_worker line of the Procfile (what `make run` starts) serves, by process name."""
    workers = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        words = command.split()
        if "p2p_worker" in words:
            workers[name.strip()] = [w for w in words[words.index("p2p_worker") + 1 :] if not w.startswith("-")]
    return workers


@pytest.fixture
def trickling(world):
    """A registry configured in the portal that serves blobs at 64 KiB/s, in front of the build registry."""
    proxy = SlowProxy(world.build_url, bytes_per_second=64 * 1024)
    Registry.objects.create(name="build-behind-a-slow-link", url=proxy.url)
    yield proxy
    proxy.throttled = False
    proxy.close()
    connection.close()


def request_import(world, proxy: SlowProxy, tag: str) -> ImportJob:
    """An import of a 1 MiB image through the trickling proxy: about 16 seconds while it trickles."""
    push_random_image(world.build_url, "outside/slow", tag, layers=1, layer_size=1024 * 1024)
    source = f"{proxy.url.split('://', 1)[1]}/outside/slow:{tag}"
    return artifact_import(integration=world.integration, source=source, actor=world.actor(world.alice))


def test_a_trickling_import_never_holds_up_a_promotion_and_its_own_worker_runs_it(
    world, rq_queues, trickling, tmp_path
):
    workers = procfile_queues()
    promotions_worker = next(name for name, queues in workers.items() if "promotions" in queues)

    job = request_import(world, trickling, "i-1")
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    assert rq_queues["imports"].job_ids == [job.job_id]

    worker = start_worker(tmp_path / "promotions.log", *workers[promotions_worker])
    try:
        wait_for(lambda: Promotion.objects.get(pk=promotion.pk).state == Promotion.State.SUCCEEDED, 60, "the promotion")
        time.sleep(2)  # time enough for this worker to take the import, were it on one of its queues
        assert ImportJob.objects.get(pk=job.pk).state == ImportJob.State.QUEUED
    finally:
        kill_tree(worker.pid)
        worker.wait(10)

    trickling.throttled = False
    imports_worker = next(name for name, queues in workers.items() if "imports" in queues)
    worker = start_worker(tmp_path / "imports.log", *workers[imports_worker])
    try:
        wait_for(lambda: ImportJob.objects.get(pk=job.pk).state == ImportJob.State.SUCCEEDED, 60, "the import")
    finally:
        kill_tree(worker.pid)
        worker.wait(10)


def test_a_trickling_import_ends_failed_when_its_time_is_up_and_moves_no_tag(
    world, rq_queues, run_worker, trickling, settings
):
    settings.P2P_IMPORT_TIMEOUT = 2
    job = request_import(world, trickling, "t-1")
    rq_timeout = Job.fetch(job.job_id, connection=rq_queues["imports"].connection).timeout

    started = time.monotonic()
    run_worker()
    assert time.monotonic() - started < 10

    job.refresh_from_db()
    assert job.state == ImportJob.State.FAILED and job.finished_at is not None
    assert "took longer than P2P_IMPORT_TIMEOUT (2 s) and was stopped" in job.error
    assert AuditEntry.objects.get(action="artifact.import_failed", object_id=str(job.pk)).reason == job.error
    # The abandoned copy finishes its blob once the link is fast again, but may not push the manifest (the tag).
    trickling.throttled = False
    for thread in threading.enumerate():
        if thread.name == f"import-{job.pk}":
            thread.join(60)
    assert get_manifest_digest(world.build_url, world.qa.repository, "t-1") is None
    assert rq_timeout == 2 + background.IMPORT_TIMEOUT_GRACE  # RQ's kill comes only after the job has stopped itself


def test_an_import_whose_runs_keep_dying_is_failed_by_the_reconciler_once_its_attempts_are_spent(
    world, rq_queues, trickling, settings, tmp_path
):
    settings.P2P_IMPORT_MAX_ATTEMPTS = 2
    job = request_import(world, trickling, "k-1")
    started = StartedJobRegistry(queue=rq_queues["imports"])

    for attempt in (1, 2):
        worker = start_worker(tmp_path / f"worker-{attempt}.log", "imports")
        try:
            wait_for(
                lambda n=attempt: ImportJob.objects.filter(pk=job.pk, state="running", attempts=n).exists(),
                60,
                f"run {attempt} to start",
            )
        finally:
            kill_tree(worker.pid)
            worker.wait(10)
        # RQ marks a dead worker's job abandoned once its time has run out; let that time pass.
        started.cleanup(timestamp=time.time() + 10 * 24 * 3600)
        if attempt == 1:
            assert reconcile() == 1
            assert ImportJob.objects.get(pk=job.pk).state == ImportJob.State.QUEUED

    assert reconcile() == 0
    job.refresh_from_db()
    assert job.state == ImportJob.State.FAILED and job.attempts == 2
    assert "gave up after 2 attempts" in job.error
    entry = AuditEntry.objects.get(action="artifact.import_failed", object_id=str(job.pk))
    assert entry.actor == "reconciler" and entry.reason == job.error
    assert rq_queues["imports"].job_ids == []
    assert reconcile() == 0  # and it stays failed
