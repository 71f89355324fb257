"""Web requests never wait on a registry for long (issue 15 item 14, checked against a SIGSTOPped registry, item 15).

A real docker-registry paused with SIGSTOP accepts connections and answers nothing. Registration and push credentials
for a bucket on it answer 504 within P2P_REGISTRY_WEB_TIMEOUT, naming the registry, while registration into a bucket
on another registry goes on answering at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest
from django.db import connection

from ci_integrations.models import Bucket, Registry
from tests.support.registry_server import start_registry

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

QUICK = {"read_timeout": 1, "retry_attempts": 5, "retry_base_delay": 0.2, "retry_max_delay": 0.4}


@pytest.fixture
def paused_registry(world, settings):
    settings.P2P_REGISTRY_WEB_TIMEOUT = 3
    server = start_registry()
    row = Registry.objects.create(name=f"paused-{uuid.uuid4().hex[:8]}", url=server.url, options=QUICK)
    Bucket.objects.filter(pk=world.dev.pk).update(registry=row)
    os.kill(server.process.pid, signal.SIGSTOP)
    yield row
    os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def test_registration_on_a_paused_registry_answers_504_in_seconds_while_other_registries_keep_working(
    world, paused_registry
):
    other_dev = Bucket.objects.get(integration=world.other, env="dev")
    world.push(other_dev, "v1")
    answers: dict[str, tuple[int, dict, float]] = {}

    def register(name: str, caller: str, integration: str) -> None:
        try:
            started = time.monotonic()
            response = world.caller(caller).post(
                f"/api/v1/integrations/{integration}/artifacts/", {"env": "dev", "tag": "v1"}
            )
            answers[name] = (response.status_code, response.json(), time.monotonic() - started)
        finally:
            connection.close()

    stuck = threading.Thread(target=register, args=("paused", "ci_own", world.shop.name))
    stuck.start()
    time.sleep(0.3)  # the first request is waiting on the paused registry
    register("other", "ci_other", world.other.name)
    stuck.join(20)

    status, body, seconds = answers["other"]
    assert status == 201, body
    assert seconds < 2 and stuck.is_alive() is False
    status, body, seconds = answers["paused"]
    assert status == 504, body
    assert body["error"]["code"] == "registry_timeout"
    assert paused_registry.name in body["error"]["message"] and "did not answer" in body["error"]["message"]
    assert seconds < 3 + 4  # the budget, and a first request's start-up on a busy machine


def test_push_credentials_for_a_bucket_on_a_paused_registry_answer_504_in_seconds(world, paused_registry):
    started = time.monotonic()
    response = world.caller("ci_own").post(f"/api/v1/integrations/{world.shop.name}/push-credentials/", {"env": "dev"})
    assert response.status_code == 504, response.json()
    assert paused_registry.name in response.json()["error"]["message"]
    assert time.monotonic() - started < 3 + 4
