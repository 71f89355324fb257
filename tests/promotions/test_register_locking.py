"""Registration under load: the idempotent path takes no lock, and a real registration audits last."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ci_integrations.models import Arrival, AuditEntry
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.audit import audit_verify

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

CI = Actor.system("ci")


def _register(world, tag: str):
    return artifact_register(integration=world.integration, env="qa", tag=tag, actor=CI)


def _position(queries: list[dict], needle: str) -> int:
    return next(i for i, query in enumerate(queries) if needle in query["sql"])


def test_registering_the_same_tag_and_digest_again_takes_no_lock_and_writes_nothing(on_postgres, world):
    world.push(world.qa, "1.0")
    artifact, arrival, created = _register(world, "1.0")
    assert created
    entries = AuditEntry.objects.count()

    with CaptureQueriesContext(connection) as captured:
        again, same_arrival, created_again = _register(world, "1.0")

    sql = [query["sql"].upper() for query in captured.captured_queries]
    assert (again.pk, same_arrival.pk, created_again) == (artifact.pk, arrival.pk, False)
    assert not [query for query in sql if "FOR UPDATE" in query or "PG_ADVISORY" in query]
    assert not [query for query in sql if query.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert AuditEntry.objects.count() == entries


def test_a_registration_writes_its_audit_entries_last_in_its_transaction(on_postgres, world):
    world.push(world.qa, "2.0")

    with CaptureQueriesContext(connection) as captured:
        artifact, arrival, created = _register(world, "2.0")

    queries = captured.captured_queries
    audit_lock = _position(queries, "p2p_audit_append_lock")  # takes the lock and reads the chain head
    assert created
    # The artifact row needs no bucket lock, so it is written before the lock that serialises the bucket.
    assert _position(queries, 'INSERT INTO "ci_integrations_artifact"') < _position(queries, "FOR UPDATE")
    assert _position(queries, 'INSERT INTO "ci_integrations_arrival"') < audit_lock
    assert _position(queries, 'UPDATE "ci_integrations_bucket"') < audit_lock
    # After the append lock (which also read the chain head): one insert of both entries, nothing else (the test's
    # own transaction adds savepoint statements).
    after_lock = [q["sql"].split()[0] for q in queries[audit_lock + 1 :]]
    assert [word for word in after_lock if word not in ("SAVEPOINT", "RELEASE")] == ["INSERT"]
    entries = list(AuditEntry.objects.order_by("-id")[:2])[::-1]
    assert [entry.action for entry in entries] == ["artifact.registered", "arrival.recorded"]
    assert entries[1].object_id == str(arrival.pk) and entries[0].object_id == str(artifact.pk)
    assert entries[1].prev_hash == entries[0].hash
    assert audit_verify().ok


def test_a_new_digest_under_the_tag_is_registered_after_the_unlocked_check(on_postgres, world):
    world.push(world.qa, "3.0")
    first, _, _ = _register(world, "3.0")
    world.push(world.qa, "3.0")  # CI rebuilt and pushed the tag again: another digest

    second, arrival, created = _register(world, "3.0")

    assert created and second.digest != first.digest
    assert Arrival.objects.filter(bucket=world.qa, tag="3.0").count() == 2
    world.qa.refresh_from_db()
    assert world.qa.current_arrival_id == arrival.pk
