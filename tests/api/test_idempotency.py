"""Idempotency-Key on POST: same key and body replay the response; another body is 422; in flight is 409."""

from __future__ import annotations

import pytest

from ci_integrations.api import views
from ci_integrations.models import AuditEntry, IdempotencyRecord

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def register(world, caller, tag: str, key: str):
    return caller.post(
        f"/api/v1/integrations/{world.shop.name}/artifacts/",
        {"env": "dev", "tag": tag},
        headers={"Idempotency-Key": key},
    )


def test_the_same_key_and_body_replay_the_first_response_without_doing_it_again(world):
    world.push(world.dev, "1.0.0")
    ci = world.caller("ci_own")
    first = register(world, ci, "1.0.0", "build-77")
    assert first.status_code == 201
    registered = AuditEntry.objects.filter(action="artifact.registered").count()
    second = register(world, ci, "1.0.0", "build-77")
    assert second.status_code == 201 and second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert AuditEntry.objects.filter(action="artifact.registered").count() == registered
    # Without the key the same request is the ordinary idempotent re-register: 200, not a replay.
    plain = ci.post(f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": "dev", "tag": "1.0.0"})
    assert plain.status_code == 200 and not plain.has_header("Idempotent-Replayed")


def test_the_same_key_with_another_body_is_422(world):
    world.push(world.dev, "1.0.0")
    ci = world.caller("ci_own")
    assert register(world, ci, "1.0.0", "build-78").status_code == 201
    response = register(world, ci, "2.0.0", "build-78")
    assert response.status_code == 422 and response.json()["error"]["code"] == "idempotency_mismatch"


def test_the_same_key_while_the_first_request_runs_is_409(world, monkeypatch):
    world.push(world.dev, "1.0.0")
    ci = world.caller("ci_own")
    seen = {}
    real = views.artifact_register

    def slow_register(**kwargs):
        # The first request is still inside the service when the retry arrives.
        seen["retry"] = register(world, ci, "1.0.0", "build-79")
        return real(**kwargs)

    monkeypatch.setattr(views, "artifact_register", slow_register)
    first = register(world, ci, "1.0.0", "build-79")
    assert first.status_code == 201
    assert seen["retry"].status_code == 409 and seen["retry"].json()["error"]["code"] == "idempotency_in_flight"
    monkeypatch.setattr(views, "artifact_register", real)
    assert register(world, ci, "1.0.0", "build-79").json() == first.json()


def test_keys_belong_to_one_token_and_conflicts_release_the_key(world):
    world.push(world.dev, "1.0.0")
    assert register(world, world.caller("ci_own"), "1.0.0", "shared").status_code == 201
    assert register(world, world.caller("admin"), "1.0.0", "shared").status_code == 200  # not the other's replay
    conflict = register(world, world.caller("ci_own"), "never-pushed", "k-404")
    assert conflict.status_code == 404
    assert IdempotencyRecord.objects.filter(key="k-404", response_status=404).exists()  # a final answer is kept
    mismatch = world.caller("ci_own").post(
        f"/api/v1/integrations/{world.shop.name}/artifacts/",
        {"env": "dev", "tag": "1.0.0", "digest": "sha256:" + "0" * 64},
        headers={"Idempotency-Key": "k-409"},
    )
    assert mismatch.status_code == 409
    assert not IdempotencyRecord.objects.filter(key="k-409").exists()  # a conflict may change: retry is allowed
    bad = world.caller("ci_own").post(
        f"/api/v1/integrations/{world.shop.name}/artifacts/",
        {"env": "dev", "tag": "1.0.0"},
        headers={"Idempotency-Key": "has space"},
    )
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]["message"]


def test_a_key_older_than_a_day_is_forgotten(world):
    from datetime import timedelta

    from django.utils import timezone

    world.push(world.dev, "1.0.0")
    ci = world.caller("ci_own")
    assert register(world, ci, "1.0.0", "old-key").status_code == 201
    IdempotencyRecord.objects.filter(key="old-key").update(created_at=timezone.now() - timedelta(hours=25))
    again = register(world, ci, "1.0.0", "old-key")
    assert again.status_code == 200 and not again.has_header("Idempotent-Replayed")  # run again, not replayed
