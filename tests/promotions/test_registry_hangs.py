"""A registry that accepts connections and answers nothing: a real docker-registry paused with SIGSTOP.

The kernel still completes TCP handshakes for a stopped process, so every call connects and then waits, as the prod
registry of the demo did (issue 15, "A registry that accepts connections but never answers"). Each test resumes the
process (SIGCONT) before it ends.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest
from django.db import connection
from django.test import Client

from ci_integrations.models import AuditEntry, Promotion, Registry
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.promotions import promotion_request
from tests.support.images import get_manifest_digest
from tests.support.registry_server import start_registry

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# Short per-call deadlines so a paused registry shows within a second or two; the defaults are 15 s and 60 s.
QUICK = {"read_timeout": 1, "stall_timeout": 2, "retry_attempts": 3, "retry_base_delay": 0.2, "retry_max_delay": 0.4}


@pytest.fixture
def paused_staging(world):
    """world.staging moved onto a registry of its own, which the test pauses with `.pause()`."""
    server = start_registry()
    registry = Registry.objects.create(name=f"paused-{uuid.uuid4().hex[:8]}", url=server.url, options=QUICK)
    world.staging.registry = registry
    world.staging.save(update_fields=["registry"])
    server.pause = lambda: os.kill(server.process.pid, signal.SIGSTOP)
    server.resume = lambda: os.kill(server.process.pid, signal.SIGCONT)
    yield server
    server.resume()
    server.stop()


def run_in_thread(target) -> threading.Thread:
    def run():
        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for_log(pk: int, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = Promotion.objects.get(pk=pk).log
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log after {timeout} s:\n{Promotion.objects.get(pk=pk).log}")


def test_each_retry_against_a_paused_registry_is_a_log_line_naming_it_and_a_cancel_stops_the_running_copy(
    world, paused_staging
):
    """Items 12, 13 and 15: the log names the registry that did not answer and the call, within seconds; cancelling
    the running promotion stops it, audited, with nothing written; the same artifact then promotes cleanly."""
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    paused_staging.pause()
    worker = run_in_thread(lambda: promotion_execute(promotion_id=promotion.pk))

    host = paused_staging.host
    log = wait_for_log(promotion.pk, f"staging registry {host} did not answer a HEAD in 1 s; retry 1 of 2", 10)
    assert Promotion.objects.get(pk=promotion.pk).state == Promotion.State.RUNNING, log

    client = Client()
    client.force_login(world.alice)
    started = time.monotonic()
    answer = client.post(
        f"/api/v1/promotions/{promotion.pk}/cancel/",
        {"comment": "prod registry is down"},
        content_type="application/json",
    )
    assert answer.status_code == 200, answer.content
    worker.join(15)
    assert not worker.is_alive(), "the copy did not stop after the cancel"
    assert time.monotonic() - started < 10

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.CANCELLED
    assert "copy stopped: the promotion was cancelled" in promotion.log
    entry = AuditEntry.objects.filter(action="promotion.cancelled", object_id=str(promotion.pk)).get()
    assert entry.before["state"] == Promotion.State.RUNNING

    paused_staging.resume()
    assert get_manifest_digest(paused_staging.url, world.staging.repository, "v1") is None
    again = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    promotion_execute(promotion_id=again.pk)
    again.refresh_from_db()
    assert again.state == Promotion.State.SUCCEEDED, again.error
    assert get_manifest_digest(paused_staging.url, world.staging.repository, "v1") == artifact.digest


def test_a_promotion_against_a_paused_registry_fails_at_its_deadline(world, paused_staging, settings):
    """Item 12: every promotion has an overall deadline (P2P_COPY_DEADLINE); retries never outlast it."""
    settings.P2P_COPY_DEADLINE = 3
    Registry.objects.filter(pk=world.staging.registry_id).update(options={**QUICK, "retry_attempts": 50})
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    paused_staging.pause()

    started = time.monotonic()
    promotion_execute(promotion_id=promotion.pk)
    elapsed = time.monotonic() - started

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED
    assert "P2P_COPY_DEADLINE" in promotion.error and paused_staging.host in promotion.error, promotion.error
    assert elapsed < 6, elapsed


def test_a_running_promotion_that_is_writing_its_tag_can_no_longer_be_cancelled(world):
    """Item 13: the cancel check and the tag write cannot cross: once the copy has claimed the write, a cancel is
    refused (409) rather than reported done while the tag appears anyway."""
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    Promotion.objects.filter(pk=promotion.pk).update(state=Promotion.State.RUNNING, result_digest=artifact.digest)
    client = Client()
    client.force_login(world.alice)
    answer = client.post(f"/api/v1/promotions/{promotion.pk}/cancel/", {"comment": ""}, content_type="application/json")
    assert answer.status_code == 409
    assert "writing its tag" in answer.json()["error"]["message"]
