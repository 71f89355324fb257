"""The copy job, the reconciler and their failure modes, on real PostgreSQL, Redis, RQ and registries."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from ci_integrations.models import Arrival, Artifact, AuditEntry, Bucket, ImportJob, Promotion, Registry
from ci_integrations.registry.client import MAX_MANIFEST_BYTES, OCI_MANIFEST
from ci_integrations.services import background, copying, imports
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.artifacts import artifact_register, check_report
from ci_integrations.services.audit import audit_verify
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.errors import InvalidInput, NotFound, RegistryUnavailable, StateConflict
from ci_integrations.services.imports import artifact_import
from ci_integrations.services.preflight import promotion_preflight
from ci_integrations.services.promotions import bucket_rollback, promotion_request, promotion_retry
from ci_integrations.services.reconciler import reconcile
from tests.support.images import get_manifest_digest, manifest_of_size, push_random_image
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def queued_job_ids(rq_queues) -> list[str]:
    return [job_id for queue in rq_queues.values() for job_id in queue.job_ids]


def in_threads(*targets):
    """Run callables at once in threads with their own database connections; return results or exceptions."""
    results = [None] * len(targets)
    barrier = threading.Barrier(len(targets))

    def run(index, target):
        try:
            barrier.wait()
            results[index] = target()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_rolled_back_transaction_enqueues_nothing(world, rq_queues):
    artifact = world.register("qa", "v1")
    with pytest.raises(RuntimeError), transaction.atomic():
        promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
        raise RuntimeError("the caller's transaction fails after the request")
    assert not Promotion.objects.exists()
    assert queued_job_ids(rq_queues) == []


def test_no_approvals_needed_queues_at_once_and_the_job_carries_the_id_only(world, rq_queues, run_worker):
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    assert promotion.state == Promotion.State.QUEUED
    job = rq_queues["promotions"].fetch_job(promotion.job_id)
    assert job.args == (promotion.pk,) and job.func_name == "ci_integrations.jobs.run_promotion"
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED


def test_register_is_idempotent_and_immutable_tags_refuse_another_digest(world):
    world.push(world.qa, "v1")
    first = artifact_register(integration=world.integration, env="qa", tag="v1", actor=Actor.system("ci"))
    entries = AuditEntry.objects.count()
    again = artifact_register(integration=world.integration, env="qa", tag="v1", actor=Actor.system("ci"))
    assert again[2] is False and again[1] == first[1] and Arrival.objects.count() == 1
    assert AuditEntry.objects.count() == entries
    Bucket.objects.filter(pk=world.qa.pk).update(immutable_tags=True)
    world.push(world.qa, "v1")  # the registry lets CI overwrite the tag; the portal does not accept it
    artifacts = Artifact.objects.count()
    with pytest.raises(StateConflict, match="immutable"):
        artifact_register(integration=world.integration, env="qa", tag="v1", actor=Actor.system("ci"))
    assert Artifact.objects.count() == artifacts  # the refused image left no artifact row behind
    with pytest.raises(NotFound, match="not found"):
        artifact_register(integration=world.integration, env="qa", tag="never-pushed", actor=Actor.system("ci"))
    Registry.objects.filter(pk=world.qa.registry_id).update(
        url=f"http://127.0.0.1:{free_port()}", options={"retry_attempts": 1, "retry_base_delay": 0.01}
    )
    with pytest.raises(RegistryUnavailable):
        artifact_register(integration=world.integration, env="qa", tag="v1", actor=Actor.system("ci"))


def test_an_image_with_a_manifest_over_4_mib_is_refused_at_registration(world):
    # docker-registry itself refuses such a PUT, but other registries store them: a stand-in answers the HEAD.
    body = manifest_of_size(MAX_MANIFEST_BYTES + 1)

    class Oversized(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Type", OCI_MANIFEST)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Oversized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        Registry.objects.filter(pk=world.qa.registry_id).update(url=f"http://127.0.0.1:{server.server_port}")
        artifacts = Artifact.objects.count()

        with pytest.raises(InvalidInput, match=f"manifest of {MAX_MANIFEST_BYTES + 1} bytes, over the limit"):
            artifact_register(integration=world.integration, env="qa", tag="huge", actor=Actor.system("ci"))
    finally:
        server.shutdown()
    assert Artifact.objects.count() == artifacts
    assert not Arrival.objects.filter(bucket=world.qa, tag="huge").exists()


def test_registrations_racing_into_one_bucket_record_each_tag_once(world):
    for tag in ("race", "side-a", "side-b"):
        world.push(world.qa, tag)

    def register(tag):
        return lambda: artifact_register(integration=world.integration, env="qa", tag=tag, actor=Actor.system("ci"))

    results = in_threads(register("race"), register("race"), register("race"), register("side-a"), register("side-b"))

    assert not [r for r in results if isinstance(r, Exception)], results
    race = results[:3]
    assert sorted(created for _, _, created in race) == [False, False, True]
    assert len({arrival.pk for _, arrival, _ in race}) == 1  # the losers answer with the winner's arrival
    for tag in ("race", "side-a", "side-b"):
        assert Arrival.objects.filter(bucket=world.qa, tag=tag).count() == 1
    world.qa.refresh_from_db()
    newest = Arrival.objects.filter(bucket=world.qa).order_by("-arrived_at", "-id").first()
    assert world.qa.current_arrival_id == newest.pk
    assert AuditEntry.objects.filter(action="arrival.recorded").count() == 3
    assert audit_verify().ok


def test_two_approvals_at_once_give_one_state_change_one_job_and_one_audit_entry(world, rq_queues):
    world.to_prod.required_approvals = 1
    world.to_prod.save()
    artifact = world.register("staging", "v1")
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
    results = in_threads(
        lambda: promotion_approve(promotion=promotion, actor=world.actor(world.bob)),
        lambda: promotion_approve(promotion=promotion, actor=world.actor(world.carol)),
    )
    assert sorted(type(r).__name__ for r in results) == ["Promotion", "StateConflict"]
    assert AuditEntry.objects.filter(action="promotion.approved").count() == 1
    assert len(queued_job_ids(rq_queues)) == 1
    assert audit_verify().ok


def test_running_the_job_twice_at_once_is_harmless(world, rq_queues):
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    in_threads(
        lambda: promotion_execute(promotion_id=promotion.pk), lambda: promotion_execute(promotion_id=promotion.pk)
    )
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED and promotion.attempts == 1
    assert Arrival.objects.filter(bucket=world.staging).count() == 1
    # And once more after success: nothing happens.
    promotion_execute(promotion_id=promotion.pk)
    assert AuditEntry.objects.filter(action="promotion.succeeded").count() == 1


def test_two_promotions_into_one_bucket_do_not_interleave(world, rq_queues):
    first = world.register("qa", "v1", layers=4, layer_size=512 * 1024)
    second = world.register("qa", "v2", layers=4, layer_size=512 * 1024)
    promotions = [
        promotion_request(artifact=a, to_env="staging", actor=world.actor(world.alice)) for a in (first, second)
    ]
    in_threads(*[lambda p=p: promotion_execute(promotion_id=p.pk) for p in promotions])
    done = sorted(Promotion.objects.filter(pk__in=[p.pk for p in promotions]), key=lambda p: p.started_at)
    assert [p.state for p in done] == [Promotion.State.SUCCEEDED] * 2
    assert done[0].finished_at <= done[1].started_at, "the second copy started before the first had finished"


def test_a_permanent_error_fails_with_the_message_kept_and_retry_runs_it_again(world, rq_queues, run_worker):
    artifact = world.register("staging", "v1")
    world.to_prod.required_approvals = 0
    world.to_prod.save()
    production = world.prod.registry
    good_url = production.url
    Registry.objects.filter(pk=production.pk).update(
        url=f"http://127.0.0.1:{free_port()}", options={"retry_attempts": 1, "retry_base_delay": 0.01}
    )
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED and promotion.error
    assert "retrying" in promotion.log  # connection refused is transient: retried with backoff, then failed
    assert AuditEntry.objects.filter(action="promotion.failed", object_id=str(promotion.pk)).exists()
    Registry.objects.filter(pk=production.pk).update(url=good_url)
    promotion_retry(promotion=promotion, actor=world.actor(world.bob))
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED and promotion.attempts == 2 and promotion.error == ""


def test_an_unexpected_copy_error_reaches_the_promotion_page_and_log_without_credentials(
    world, rq_queues, monkeypatch, caplog
):

    def crash(*args, **kwargs):
        raise RuntimeError(
            "proxy said no to Authorization: Basic Y2k6aHVudGVyMg== for https://ci:hunter2@registry.example.com/v2/ "
            "with {'username': 'ci', 'password': 'hunter2'}"
        )

    monkeypatch.setattr(copying, "copy_image", crash)
    promotion = promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    promotion_execute(promotion_id=promotion.pk)
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED and "RuntimeError: proxy said no" in promotion.error
    client = Client()
    client.force_login(world.admin)
    page = client.get(reverse("promotion", args=[promotion.pk])).content.decode()
    failed = AuditEntry.objects.get(action="promotion.failed", object_id=str(promotion.pk))
    for shown in (promotion.error, promotion.log, page, str(failed.after), caplog.text):
        assert "hunter2" not in shown and "Y2k6aHVudGVyMg" not in shown
    assert "proxy said no" in page and "proxy said no" in caplog.text


def test_redis_flushed_after_approval_loses_nothing(world, rq_queues, run_worker):
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    rq_queues["promotions"].connection.flushdb()  # our own test database only
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.QUEUED  # PostgreSQL still says it must happen
    assert reconcile() == 1
    assert reconcile() == 0  # the new job is live; no duplicate
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED


def test_auto_promotion_requests_itself_once_the_checks_pass(world, rq_queues, run_worker):
    world.to_staging.auto_promote = True
    world.to_staging.required_checks = ["functional"]
    world.to_staging.save()
    artifact = world.register("qa", "v1")
    assert not Promotion.objects.exists()
    check_report(artifact=artifact, name="functional", status="passed", actor=Actor.system("ci"))
    promotion = Promotion.objects.get()
    assert promotion.requested_by_label == "auto-promote" and promotion.state == Promotion.State.QUEUED
    run_worker()
    world.staging.refresh_from_db()
    assert world.staging.current_arrival.artifact == artifact
    check_report(artifact=artifact, name="functional", status="passed", actor=Actor.system("ci"))
    assert Promotion.objects.count() == 1  # already there: auto-promotion does not repeat itself


def test_rollback_puts_the_earlier_artifact_back_with_the_rollback_approval_count(world, rq_queues, run_worker):
    world.to_prod.required_approvals = 0
    world.to_prod.rollback_approvals = 1
    world.to_prod.save()
    old = world.register("staging", "v1")
    new = world.register("staging", "v2")
    for artifact in (old, new):
        promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
        run_worker()
    world.prod.refresh_from_db()
    assert world.prod.current_arrival.artifact == new
    earlier = Arrival.objects.get(bucket=world.prod, artifact=old)

    rollback = bucket_rollback(bucket=world.prod, to_arrival=earlier, actor=world.actor(world.alice), reason="v2 500s")
    assert rollback.kind == Promotion.Kind.ROLLBACK and rollback.required_approvals == 1
    assert rollback.state == Promotion.State.PENDING_APPROVAL
    promotion_approve(promotion=rollback, actor=world.actor(world.bob))
    run_worker()
    rollback.refresh_from_db()
    assert rollback.state == Promotion.State.SUCCEEDED, rollback.error
    world.prod.refresh_from_db()
    assert world.prod.current_arrival.artifact == old and world.prod.current_arrival.how == Arrival.How.ROLLBACK
    assert get_manifest_digest(world.production_url, world.prod.repository, "v1") == old.digest
    assert AuditEntry.objects.get(action="bucket.rolled_back").reason == "v2 500s"


def test_import_copies_from_a_build_registry_into_the_first_bucket(world, rq_queues, run_worker, registry_servers):
    outside, _ = registry_servers
    digest = push_random_image(outside.url, "outside/checkout", "build-7")
    job = artifact_import(
        integration=world.integration,
        source=f"{outside.host}/outside/checkout:build-7",
        metadata={"git_sha": "deadbeef"},
        actor=world.actor(world.alice),
    )
    assert job.state == ImportJob.State.QUEUED
    run_worker()
    job.refresh_from_db()
    assert job.state == ImportJob.State.SUCCEEDED, job.error
    world.qa.refresh_from_db()
    arrival = world.qa.current_arrival
    assert arrival.how == Arrival.How.IMPORT and arrival.artifact.digest == digest
    assert arrival.artifact.git_sha == "deadbeef"


def test_an_import_lands_in_the_workflows_entry_bucket_even_when_a_later_bucket_comes_first(world, registry_servers):
    """Buckets are ordered for display; an import must still enter where CI registers, never skip into prod."""
    outside, _ = registry_servers
    Bucket.objects.filter(pk=world.prod.pk).update(position=0)  # prod is listed first
    Bucket.objects.filter(pk__in=[world.qa.pk, world.staging.pk]).update(position=5)
    job = artifact_import(
        integration=world.integration, source=f"{outside.host}/outside/app:1.0", actor=world.actor(world.alice)
    )
    assert job.arguments["env"] == "qa"


def test_an_import_copies_with_the_configured_number_of_blob_streams(
    world, rq_queues, run_worker, registry_servers, settings, monkeypatch
):
    outside, _ = registry_servers
    digest = push_random_image(outside.url, "outside/checkout", "build-9")
    settings.P2P_COPY_PARALLELISM = 2
    real_copy, streams = imports.copy_image, []

    def copy_recording_streams(*args, **kwargs):
        streams.append(kwargs.get("parallelism"))
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(imports, "copy_image", copy_recording_streams)
    job = artifact_import(
        integration=world.integration, source=f"{outside.host}/outside/checkout:build-9", actor=world.actor(world.alice)
    )
    run_worker()
    job.refresh_from_db()
    assert job.state == ImportJob.State.SUCCEEDED, job.error
    assert streams == [2]
    world.qa.refresh_from_db()
    assert world.qa.current_arrival.artifact.digest == digest


def test_an_import_whose_worker_died_is_run_again_by_the_reconciler(world, rq_queues, run_worker, registry_servers):
    outside, _ = registry_servers
    digest = push_random_image(outside.url, "outside/checkout", "build-8")
    job = artifact_import(
        integration=world.integration, source=f"{outside.host}/outside/checkout:build-8", actor=world.actor(world.alice)
    )
    # The worker took the job and died: the row says running, and Redis no longer knows the job.
    ImportJob.objects.filter(pk=job.pk).update(state=ImportJob.State.RUNNING)
    for queue in rq_queues.values():
        queue.empty()
    assert reconcile() == 1
    assert AuditEntry.objects.filter(action="artifact.import_requeued", object_id=str(job.pk)).exists()
    run_worker()
    job.refresh_from_db()
    assert job.state == ImportJob.State.SUCCEEDED, job.error
    world.qa.refresh_from_db()
    assert world.qa.current_arrival.artifact.digest == digest


def test_an_import_never_moves_an_immutable_tag_to_another_image(world, rq_queues, run_worker, registry_servers):
    outside, _ = registry_servers
    Bucket.objects.filter(pk=world.qa.pk).update(immutable_tags=True)
    held = world.register("qa", "v1")
    push_random_image(outside.url, "outside/checkout", "build-9")
    job = artifact_import(
        integration=world.integration,
        source=f"{outside.host}/outside/checkout:build-9",
        tag="v1",
        actor=world.actor(world.alice),
    )
    run_worker()
    job.refresh_from_db()
    assert job.state == ImportJob.State.FAILED and "immutable" in job.error
    assert get_manifest_digest(world.build_url, world.qa.repository, "v1") == held.digest


def test_an_import_whose_credentials_cannot_be_read_fails_instead_of_running_for_ever(
    world, rq_queues, run_worker, registry_servers, settings
):
    from cryptography.fernet import Fernet

    outside, _ = registry_servers
    job = artifact_import(
        integration=world.integration,
        source=f"{outside.host}/outside/checkout:build-10",
        source_credentials={"username": "ci", "password": "import-s3cret"},
        actor=world.actor(world.alice),
    )
    settings.P2P_FERNET_KEYS = [Fernet.generate_key().decode()]  # the key that encrypted them was rotated out
    run_worker()
    job.refresh_from_db()
    assert job.state == ImportJob.State.FAILED and "cannot be decrypted" in job.error
    assert job.arguments["credentials_encrypted"] == "" and job.finished_at is not None


def test_the_last_two_approvals_at_once_still_give_exactly_one_transition(world, rq_queues):
    artifact = world.register("staging", "v1")
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
    results = in_threads(
        lambda: promotion_approve(promotion=promotion, actor=world.actor(world.bob)),
        lambda: promotion_approve(promotion=promotion, actor=world.actor(world.carol)),
    )
    assert all(isinstance(r, Promotion) for r in results)
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.QUEUED
    assert AuditEntry.objects.filter(action="promotion.approved").count() == 1
    assert AuditEntry.objects.filter(action="promotion.approval_recorded").count() == 1
    assert queued_job_ids(rq_queues) == [promotion.job_id]


def test_a_failed_enqueue_after_commit_is_repaired_by_the_reconciler(world, rq_queues, run_worker, monkeypatch):
    artifact = world.register("qa", "v1")

    def redis_down(name):
        raise ConnectionError("Redis is down")

    with monkeypatch.context() as patched:
        patched.setattr(background, "get_queue", redis_down)
        promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    assert promotion.state == Promotion.State.QUEUED and queued_job_ids(rq_queues) == []
    assert reconcile() == 1
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED


def test_preflight_reports_access_and_bytes_and_turns_registry_trouble_into_entries(world):
    artifact = world.register("staging", "v1", layers=2, layer_size=8192)
    report = promotion_preflight(artifact=artifact, to_env="prod")
    assert report["source_readable"] and report["target_writable"] and report["errors"] == []
    assert report["bytes_to_move"] > 16384 and report["tag_conflict"] is None and report["tag"] == "v1"
    Registry.objects.filter(pk=world.prod.registry_id).update(
        url=f"http://127.0.0.1:{free_port()}", options={"retry_attempts": 1, "retry_base_delay": 0.01}
    )
    report = promotion_preflight(artifact=artifact, to_env="prod")
    assert report["target_writable"] is False and any(e.startswith("target") for e in report["errors"])
