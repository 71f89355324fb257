"""GET /metrics: who may read it, and the exact figures it counts from the database at scrape time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import django_rq
import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from ci_integrations import metrics
from ci_integrations.models import Promotion, Webhook, WebhookDelivery
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.audit_verification import RESULT_KEY
from tests.insights.conftest import at

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]
TOKEN = "metrics-token-for-tests-0123456789"


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels…): value} of a scrape."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def scrape(**headers) -> dict[tuple, float]:
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.content.decode())


@pytest.fixture(autouse=True)
def fresh_settled_totals():
    """Each test's database is new: the totals a previous test's scrape kept must not carry over."""
    metrics.settled_forget()
    yield
    metrics.settled_forget()


@pytest.fixture
def token(settings):
    settings.P2P_METRICS_TOKEN = TOKEN
    settings.P2P_METRICS_ALLOWED_IPS = []


def promotion(history, state, *, env="prod", name="shop", created=None, started=None, finished=None) -> Promotion:
    artifact = history.artifact(name, created_at=at(9, 0))
    return Promotion.objects.create(
        integration=history.integration(name),
        artifact=artifact,
        digest=artifact.digest,
        to_bucket=history.buckets[name, env],
        tag="t",
        state=state,
        created_at=created or at(10, 0),
        started_at=started,
        finished_at=finished,
    )


def test_metrics_are_off_when_neither_a_token_nor_addresses_are_set(settings, history):
    settings.P2P_METRICS_TOKEN, settings.P2P_METRICS_ALLOWED_IPS = "", []
    assert Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_a_token_is_needed_where_one_is_set(token, history):
    missing = Client().get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert Client().get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_allowed_addresses_need_no_token_and_others_are_refused(settings, history):
    import ipaddress

    settings.P2P_METRICS_TOKEN = ""
    settings.P2P_METRICS_ALLOWED_IPS = [ipaddress.ip_network("10.1.0.0/16")]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.2.0.1").get("/metrics").status_code == 403
    settings.P2P_METRICS_TOKEN = TOKEN  # both: the token works from anywhere, the address without the token
    assert Client(REMOTE_ADDR="10.2.0.1").get("/metrics").status_code == 401
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert (
        Client(REMOTE_ADDR="10.2.0.1").get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    )


def test_promotions_are_counted_by_outcome_and_failures_from_the_audit_log(token, history):
    promotion(history, Promotion.State.SUCCEEDED)
    promotion(history, Promotion.State.SUCCEEDED)
    promotion(history, Promotion.State.REJECTED, env="staging")
    retried = promotion(history, Promotion.State.RUNNING)  # it failed once, was retried and now runs again
    audit_record(actor=Actor.system("worker"), action="promotion.failed", obj=retried)
    promotion(history, Promotion.State.PENDING_APPROVAL, created=at(12, 6))
    promotion(history, Promotion.State.PENDING_APPROVAL, created=at(11, 6), name="cart")
    found = scrape()
    assert found[("p2p_promotions_total", ("env", "prod"), ("integration", "shop"), ("state", "succeeded"))] == 2
    assert found[("p2p_promotions_total", ("env", "staging"), ("integration", "shop"), ("state", "rejected"))] == 1
    assert found[("p2p_promotions_total", ("env", "prod"), ("integration", "shop"), ("state", "failed"))] == 1
    assert found[("p2p_promotions_open", ("env", "prod"), ("integration", "shop"), ("state", "running"))] == 1
    assert found[("p2p_pending_approvals", ("env", "prod"))] == 2
    assert found[("p2p_pending_approval_oldest_timestamp_seconds", ("env", "prod"))] == at(11, 6).timestamp()


def test_durations_are_a_histogram_of_the_whole_request_and_of_the_copy(token, history):
    start = at(10, 0)
    for total, copy in [(30, 4), (600, 50), (7200, 100)]:
        promotion(
            history,
            Promotion.State.SUCCEEDED,
            created=start,
            started=start + timedelta(seconds=total - copy),
            finished=start + timedelta(seconds=total),
        )
    promotion(history, Promotion.State.CANCELLED, created=start, finished=start + timedelta(seconds=5))  # not copied
    found = scrape()

    def bucket(phase, le):
        return found[("p2p_promotion_duration_seconds_bucket", ("le", le), ("phase", phase))]

    assert [bucket("total", le) for le in ("15", "60", "900", "3600", "14400", "+Inf")] == [0, 1, 2, 2, 3, 3]
    assert [bucket("copy", le) for le in ("1", "5", "60", "300", "+Inf")] == [0, 1, 2, 3, 3]
    assert found[("p2p_promotion_duration_seconds_sum", ("phase", "total"))] == 30 + 600 + 7200
    assert found[("p2p_promotion_duration_seconds_count", ("phase", "copy"))] == 3


def test_audit_webhooks_queues_and_the_last_verification(token, history, rq_queues):
    entries = [audit_record(actor="tests", action="test.entry") for _ in range(3)]
    audit_record(actor="reconciler", action="promotion.requeued", obj=promotion(history, Promotion.State.QUEUED))
    hook = Webhook.objects.create(integration=history.integration("shop"), url="https://hooks.example.com/x")
    for delivered, given_up in [(True, False), (True, False), (False, True), (False, False)]:
        WebhookDelivery.objects.create(
            webhook=hook,
            event="succeeded",
            payload={},
            delivered_at=at(10, 0) if delivered else None,
            given_up_at=at(10, 0) if given_up else None,
        )
    # A job id waiting in the promotions queue's list (enqueueing would wait for a commit that a test never makes).
    rq_queues["promotions"].connection.rpush(rq_queues["promotions"].key, "waiting-job")
    redis = django_rq.get_connection("default")
    redis.set(RESULT_KEY, json.dumps({"ok": True, "entries": 4, "verified_at": "2026-03-14T08:00:00+00:00"}))
    try:
        found = scrape()
    finally:
        redis.delete(RESULT_KEY)
    assert found[("p2p_audit_entries_total",)] >= entries[-1].pk + 1
    assert found[("p2p_reconciler_requeued_total",)] == 1
    assert found[("p2p_webhook_deliveries_total", ("result", "delivered"))] == 2
    assert found[("p2p_webhook_deliveries_total", ("result", "given_up"))] == 1
    assert found[("p2p_webhook_deliveries_total", ("result", "pending"))] == 1
    assert found[("p2p_queue_depth", ("queue", "promotions"))] == 1
    assert found[("p2p_queue_depth", ("queue", "default"))] == 0
    assert found[("p2p_audit_last_verified_timestamp_seconds",)] == datetime(2026, 3, 14, 8, tzinfo=UTC).timestamp()


def test_a_scrape_runs_the_same_few_queries_however_many_rows(token, history, django_assert_max_num_queries):
    with django_assert_max_num_queries(10):
        scrape()  # the first adds up what is settled: five more queries, once per SETTLED_REFRESH
    with django_assert_max_num_queries(5) as small:
        scrape()
    for n in range(30):
        promotion(history, Promotion.State.SUCCEEDED, name=f"svc-{n % 5}")
    with django_assert_max_num_queries(5) as large:
        found = scrape()
    assert len(small.captured_queries) == len(large.captured_queries)
    assert found[("p2p_promotions_total", ("env", "prod"), ("integration", "svc-0"), ("state", "succeeded"))] == 6


def test_promotions_open_when_the_totals_were_added_up_are_counted_in_their_state_now(token, history):
    running = promotion(history, Promotion.State.RUNNING, created=at(10, 0))  # old enough to be settled
    done = promotion(history, Promotion.State.SUCCEEDED, created=at(10, 0), started=at(10, 1), finished=at(10, 1, 30))
    first = scrape()
    assert first[("p2p_promotions_open", ("env", "prod"), ("integration", "shop"), ("state", "running"))] == 1
    Promotion.objects.filter(pk=running.pk).update(
        state=Promotion.State.SUCCEEDED, started_at=at(10, 2), finished_at=at(10, 3)
    )
    promotion(history, Promotion.State.CANCELLED)  # after the totals were added up
    again = scrape()
    assert metrics._settled is not None and done.pk <= metrics._settled.upto_id  # the cache was used
    key = ("p2p_promotions_total", ("env", "prod"), ("integration", "shop"))
    assert again[(*key, ("state", "succeeded"))] == 2 and again[(*key, ("state", "cancelled"))] == 1
    assert ("p2p_promotions_open", ("env", "prod"), ("integration", "shop"), ("state", "running")) not in again
    assert again[("p2p_promotion_duration_seconds_count", ("phase", "copy"))] == 2
    assert again[("p2p_promotion_duration_seconds_sum", ("phase", "copy"))] == 1800 + 3600  # 30 min and an hour


def test_copy_bytes_are_summed_by_mode_from_the_copy_summaries_of_succeeded_promotions(token, history):
    done = promotion(history, Promotion.State.SUCCEEDED)
    worker = Actor.system("worker")
    copy = {"bytes_transferred": 1000, "bytes_mounted": 200, "bytes_skipped": 30}
    audit_record(actor=worker, action="promotion.succeeded", obj=done, after={"copy": copy})
    older = {"bytes_transferred": 5}  # written before the summary had mounted and skipped bytes
    audit_record(actor=worker, action="promotion.succeeded", obj=done, after={"copy": older})
    audit_record(actor=worker, action="promotion.failed", obj=done, after={"copy": copy})  # not a success
    first = scrape()
    assert [first[("p2p_copy_bytes_total", ("mode", m))] for m in ("copied", "mounted", "skipped")] == [1005, 200, 30]
    audit_record(actor=worker, action="promotion.succeeded", obj=done, after={"copy": {"bytes_mounted": 7}})
    again = scrape()  # the first sum is kept; the new entry is added to it
    assert again[("p2p_copy_bytes_total", ("mode", "mounted"))] == 207


def test_manage_py_verify_audit_sets_the_last_verified_time_the_metric_shows(token, history):
    import io

    from django.core.management import call_command

    audit_record(actor="tests", action="test.entry")
    redis = django_rq.get_connection("default")
    redis.delete(RESULT_KEY)
    before = datetime.now(UTC).replace(microsecond=0).timestamp()
    try:
        call_command("verify_audit", stdout=io.StringIO())
        found = scrape()
    finally:
        redis.delete(RESULT_KEY)
    assert before <= found[("p2p_audit_last_verified_timestamp_seconds",)] <= datetime.now(UTC).timestamp()


def test_copy_bytes_count_imports_too(token, history):
    worker = Actor.system("import:tests")
    audit_record(
        actor=worker, action="artifact.imported", after={"copy": {"bytes_transferred": 40, "bytes_skipped": 2}}
    )
    found = scrape()
    assert found[("p2p_copy_bytes_total", ("mode", "copied"))] == 40
    assert found[("p2p_copy_bytes_total", ("mode", "skipped"))] == 2
